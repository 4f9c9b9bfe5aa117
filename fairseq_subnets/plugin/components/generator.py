"""Greedy CTC decoding in the form `fairseq-generate` consumes.

fairseq's default `build_generator` returns an autoregressive beam search, which cannot drive a CTC
model. `fairseq-generate` needs, per utterance, a list of hypothesis dicts with `tokens` (1-D int
tensor, blanks and repeats removed), `score` (float), `positional_scores` (float tensor, one per
token; generate divides it in place), and an `alignment` key.
"""
import torch


class CtcGreedyGenerator:
    """Best path decoding: argmax per frame, collapse repeats, drop blanks.

    With several models (`--path a.pt:b.pt`) their frame log-probabilities are averaged.
    """

    def __init__(self, target_dictionary, blank_index):
        self.blank_index = blank_index
        self.symbols_to_strip_from_output = {
            blank_index, target_dictionary.pad(), target_dictionary.eos(), target_dictionary.bos()
        }

    @torch.no_grad()
    def generate(self, models, sample, **unused):
        log_probs, frame_counts = self.emissions(models, sample["net_input"])
        return [
            [self.best_path(log_probs[b, : frame_counts[b]])] for b in range(log_probs.size(0))
        ]

    @staticmethod
    def emissions(models, net_input):
        """Batch-first frame log-probabilities and the number of real (unpadded) frames per row."""
        summed = None
        for model in models:
            net_output = model(**net_input)
            log_probs = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1)
            summed = log_probs if summed is None else summed + log_probs
        padding_mask = net_output["padding_mask"]
        if padding_mask is None:
            frame_counts = [summed.size(1)] * summed.size(0)
        else:
            frame_counts = (~padding_mask).sum(dim=1).tolist()
        return summed / len(models), frame_counts

    def best_path(self, log_probs):
        frame_scores, frame_ids = log_probs.max(dim=-1)
        starts_run = torch.ones_like(frame_ids, dtype=torch.bool)
        starts_run[1:] = frame_ids[1:] != frame_ids[:-1]
        emitted = starts_run & (frame_ids != self.blank_index)
        return {
            "tokens": frame_ids[emitted].long().cpu(),
            "score": float(frame_scores.sum()),
            "positional_scores": frame_scores[emitted].float().cpu().clone(),
            "alignment": None,
        }
