"""16 kHz mono 16-bit audio, the only format the manifests of this package point at.

Resampling is done here (scipy's polyphase filter, no dither) rather than by sox, so the output is
bit-identical from run to run and there is one system dependency less. numpy, scipy and soundfile
are imported by the functions that convert audio, so importing SAMPLE_RATE (the manifest check, the
demo's settings behind `fairseq-subnets --help`) loads none of them.
"""
from math import gcd

from .files import atomic_path

SAMPLE_RATE = 16000
FORMATS_READ_IN_PLACE = ("WAV", "FLAC")  # fairseq reads these with soundfile and exact lengths


def to_target_rate_mono_int16(samples, sample_rate):
    """Int16 mono samples at SAMPLE_RATE from any soundfile array (frames x channels, or frames)."""
    import numpy as np
    from scipy.signal import resample_poly

    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        common = gcd(SAMPLE_RATE, sample_rate)
        samples = resample_poly(samples, SAMPLE_RATE // common, sample_rate // common)
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)


def write_wav_atomic(path, samples_int16):
    import soundfile

    with atomic_path(path) as temporary:
        soundfile.write(temporary, samples_int16, SAMPLE_RATE, format="WAV", subtype="PCM_16")


def convert_to_wav(source, destination):
    """Decodes any format libsndfile reads (mp3, ogg/opus, flac, wav...) into a 16 kHz mono wav.

    Returns the number of samples written.
    """
    import soundfile

    samples, sample_rate = soundfile.read(source, dtype="float64", always_2d=True)
    converted = to_target_rate_mono_int16(samples, sample_rate)
    write_wav_atomic(destination, converted)
    return len(converted)


def usable_in_place(info):
    """Whether fairseq can read this file as is: 16 kHz mono WAV or FLAC."""
    return info.format in FORMATS_READ_IN_PLACE and info.samplerate == SAMPLE_RATE and info.channels == 1
