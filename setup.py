from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = Path(__file__).resolve().parent / "fairseq_subnets"


def shipped_configs():
    """Every yaml of the package, relative to it: the entry configs in config/ and the configs each
    technique ships in its own folder (techniques/<technique>/configs/<group>/, at several depths)."""
    return sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.yaml"))


setup(
    name="fairseq_subnets",
    version="0.4.0",
    description="Find, train, compare and ship subnetworks of wav2vec2 / XLS-R models inside stock fairseq.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["fairseq_subnets", "fairseq_subnets.*"]),
    package_data={"fairseq_subnets": shipped_configs()},
    # fairseq-fixed lists torchaudio (which drags in a CUDA torch), so `make setup` installs this
    # package and fairseq-fixed with --no-deps after their real needs; see scripts/setup_venv.sh.
    install_requires=[
        "fairseq-fixed==0.12.3.1",
        "torch==2.13.0",
        "omegaconf==2.3.0",
        "hydra-core==1.3.2",
        "sentencepiece",
        "editdistance",
        "soundfile",
        "safetensors",
        "numpy",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
        "submitit",
    ],
    # `export --format hf` and `import --format hf` (fairseq_subnets.interop.hf) need transformers;
    # nothing else imports it.
    extras_require={"hf": ["transformers>=5,<6"]},
    entry_points={"console_scripts": ["fairseq-subnets=fairseq_subnets.cli.main:main"]},
)
