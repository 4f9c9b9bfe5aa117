"""Our tuners against HuggingFace PEFT, the library the S2-LoRA paper implemented every method
with: on the same nn.Linear and the same parameter values, LoRA, IA3 (output and input side),
AdaLoRA, GLoRA, DoRA and VeRA compute what PEFT's layers compute (DoRA and VeRA also the same
gradients of what they train, from the same start), and AdaLoRA's allocator keeps the triplets
PEFT's RankAllocator keeps given the same importance averages.

PEFT is a test dependency only (`scripts/setup_venv.sh` installs it); checked against 0.21.0."""
import copy

import peft
import pytest
import torch
from peft.tuners.adalora.layer import RankAllocator, SVDLinear
from peft.tuners.glora.layer import GloraLinear
from peft.tuners.ia3.layer import Linear as PeftIa3Linear
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.vera.layer import Linear as PeftVeraLinear
from torch import nn

from fairseq_subnets.core.transforms import add_transform
from fairseq_subnets.techniques.tuners import tuner_config
from fairseq_subnets.techniques.tuners.adalora import AdaLoraConfig, SvdDelta, mask_to_budget
from fairseq_subnets.techniques.tuners.dora import DoraChange
from fairseq_subnets.techniques.tuners.glora import GloraChange
from fairseq_subnets.techniques.tuners.ia3 import Ia3InputScale, Ia3OutputScale
from fairseq_subnets.techniques.tuners.lora import LoraDelta
from fairseq_subnets.techniques.tuners.vera import VeraDelta, random_bases
from fairseq_subnets.techniques.tuners.vera.config import bases_shape

PEFT_VERSION = "0.21.0"
D_OUT, D_IN, R = 24, 40, 4


def test_the_peft_version_is_the_one_these_checks_were_made_against():
    assert peft.__version__ == PEFT_VERSION


def linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(D_IN, D_OUT)


def inputs():
    return torch.randn(5, 7, D_IN, generator=torch.Generator().manual_seed(3))


def random_like(tensor, seed):
    return torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(ours: nn.Module, theirs: nn.Module):
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_lora_matches_peft():
    base = linear()
    theirs = PeftLoraLinear(copy.deepcopy(base), "default", peft.LoraConfig(), r=R, lora_alpha=16)
    delta = LoraDelta.create((D_OUT, D_IN), R, 16.0)
    with torch.no_grad():
        delta.lora_A.copy_(random_like(delta.lora_A, 1))
        delta.lora_B.copy_(random_like(delta.lora_B, 2))
        theirs.lora_A["default"].weight.copy_(delta.lora_A)
        theirs.lora_B["default"].weight.copy_(delta.lora_B)
    add_transform(base, "default", delta)
    assert_same_outputs(base, theirs)


@pytest.mark.parametrize("feedforward", [False, True], ids=["output", "input"])
def test_ia3_matches_peft_on_either_side(feedforward):
    base = linear()
    theirs = PeftIa3Linear(copy.deepcopy(base), "default", peft.IA3Config(), is_feedforward=feedforward)
    scale = (Ia3InputScale if feedforward else Ia3OutputScale).create((D_OUT, D_IN))
    with torch.no_grad():
        scale.ia3_l.copy_(1 + 0.5 * random_like(scale.ia3_l, 1))
        theirs.ia3_l["default"].copy_(scale.ia3_l.view_as(theirs.ia3_l["default"]))
    add_transform(base, "default", scale)
    assert_same_outputs(base, theirs)


def assert_same_gradients(ours: nn.Module, theirs: nn.Module, pairs):
    """The same loss on both outputs; `pairs` of (our parameter, PEFT's) get the same gradient."""
    x = inputs()
    weights = torch.randn(5, 7, D_OUT, generator=torch.Generator().manual_seed(4))
    for module in (ours, theirs):
        (module(x) * weights).sum().backward()
    for mine, peft_one in pairs:
        torch.testing.assert_close(mine.grad, peft_one.grad.view_as(mine.grad), rtol=1e-4, atol=1e-5)


def test_dora_starts_as_peft_does_and_matches_it_in_outputs_and_gradients():
    base = linear()
    theirs = PeftLoraLinear(copy.deepcopy(base), "default", peft.LoraConfig(use_dora=True), r=R, lora_alpha=16)
    change = DoraChange.create(base.weight, R, 16.0)
    magnitude = theirs.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(change.magnitude, magnitude)  # the rows' norms of W
    assert not change.lora_B.any() and not theirs.lora_B["default"].weight.any()
    with torch.no_grad():
        change.lora_A.copy_(random_like(change.lora_A, 1))
        change.lora_B.copy_(random_like(change.lora_B, 2))
        change.magnitude.mul_(1 + 0.3 * random_like(change.magnitude, 3))
        theirs.lora_A["default"].weight.copy_(change.lora_A)
        theirs.lora_B["default"].weight.copy_(change.lora_B)
        magnitude.copy_(change.magnitude)
    add_transform(base, "default", change)
    base.parametrizations.weight.original.requires_grad_(False)
    assert_same_outputs(base, theirs)
    assert_same_gradients(base, theirs, [(change.lora_A, theirs.lora_A["default"].weight),
                                         (change.lora_B, theirs.lora_B["default"].weight),
                                         (change.magnitude, magnitude)])


class TwoShapes(nn.Module):
    """Two matrices of different shapes, so that VeRA's bases span the larger of each dimension."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Linear(D_IN, D_OUT)
        self.tall = nn.Linear(D_OUT, D_IN + 8)

    def forward(self, x):
        return self.wide(x)


def test_vera_draws_peft_bases_and_matches_it_in_outputs_and_gradients():
    options = dict(r=R, projection_prng_key=11, d_initial=0.3)
    theirs = peft.get_peft_model(TwoShapes(), peft.VeraConfig(target_modules=["wide", "tall"], **options))
    ours = TwoShapes()
    shapes = {name: tuple(getattr(ours, name).weight.shape) for name in ("wide", "tall")}
    config = tuner_config("vera", r=R, projection_seed=11, d_initial=0.3)
    bases = random_bases(config.r, *bases_shape(shapes), config.projection_seed)
    assert torch.equal(bases[0], theirs.base_model.vera_A["default"])
    assert torch.equal(bases[1], theirs.base_model.vera_B["default"])
    for name in ("wide", "tall"):
        layer = getattr(theirs.base_model.model, name)
        assert isinstance(layer, PeftVeraLinear)
        delta = VeraDelta(shapes[name], bases, config.d_initial)
        assert torch.equal(delta.lambda_d, layer.vera_lambda_d["default"])
        assert torch.equal(delta.lambda_b, layer.vera_lambda_b["default"])
        with torch.no_grad():
            delta.lambda_b.copy_(random_like(delta.lambda_b, 1))
            layer.vera_lambda_b["default"].copy_(delta.lambda_b)
        add_transform(getattr(ours, name), "default", delta)
        getattr(ours, name).parametrizations.weight.original.requires_grad_(False)
    wide = theirs.base_model.model.wide
    assert_same_outputs(ours.wide, wide)
    ours_delta = ours.wide.parametrizations.weight[0].vera["default"]
    assert_same_gradients(ours.wide, wide, [(ours_delta.lambda_b, wide.vera_lambda_b["default"]),
                                            (ours_delta.lambda_d, wide.vera_lambda_d["default"])])


def peft_adalora_config(**overrides):
    options = dict(init_r=R, target_r=2, total_step=100, tinit=0, tfinal=0, deltaT=1, beta1=0.85, beta2=0.85)
    options.update(overrides)
    return peft.AdaLoraConfig(**options)


def test_adalora_matches_peft():
    base = linear()
    theirs = SVDLinear(copy.deepcopy(base), "default", peft_adalora_config(), r=R, lora_alpha=8)
    delta = SvdDelta((D_OUT, D_IN), R, alpha=8.0, orthogonality_weight=0.0)
    with torch.no_grad():
        for name, seed in (("lora_A", 1), ("lora_E", 2), ("lora_B", 3)):
            getattr(delta, name).copy_(random_like(getattr(delta, name), seed))
            getattr(theirs, name)["default"].copy_(getattr(delta, name).view_as(getattr(theirs, name)["default"]))
    add_transform(base, "default", delta)
    assert_same_outputs(base, theirs)


def test_glora_matches_peft():
    base = linear()
    theirs = GloraLinear(copy.deepcopy(base), "default", peft.GloraConfig(r=R))
    change = GloraChange((D_OUT, D_IN), R)
    pairs = {  # ours -> PEFT's: A = Xd @ Xu, B likewise, C = (d_in x r)(r x 1), D and E scalars
        "scale_up": ("glora_A", "Xd"), "scale_down": ("glora_A", "Xu"),
        "delta_up": ("glora_B", "Xd"), "delta_down": ("glora_B", "Xu"),
        "coupling_up": ("glora_C", "Xd"), "coupling_down": ("glora_C", "Xu"),
        "bias_scale": ("glora_D", "X"), "bias_shift": ("glora_E", "X"),
    }
    with torch.no_grad():
        for seed, (ours, (path, leaf)) in enumerate(pairs.items()):
            value = 0.1 * random_like(getattr(change, ours), seed)
            getattr(change, ours).copy_(value)
            getattr(getattr(theirs, path)["default"], leaf).copy_(value.view_as(
                getattr(getattr(theirs, path)["default"], leaf)))
    add_transform(base, "default", change)
    assert_same_outputs(base, theirs)


class PeftAdaLoraLayers(nn.Module):
    """Three PEFT SVD layers under names PEFT's RankAllocator reads (`...lora_A.default`)."""

    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(SVDLinear(nn.Linear(D_IN, D_OUT), "default", config, r=R, lora_alpha=8)
                                    for _ in range(3))


@pytest.mark.parametrize("budget", [11, 8, 6, 3])
def test_the_adalora_allocator_keeps_the_triplets_peft_keeps(budget):
    config = peft_adalora_config()
    peft_layers = PeftAdaLoraLayers(config)
    allocator = RankAllocator(peft_layers, config, "default")
    ours = {f"m{i}": SvdDelta((D_OUT, D_IN), R, alpha=8.0, orthogonality_weight=0.0) for i in range(3)}
    with torch.no_grad():
        for i, (layer, delta) in enumerate(zip(peft_layers.layers, ours.values())):
            for j, factor in enumerate(("lora_A", "lora_E", "lora_B")):
                name = f"layers.{i}.{factor}.default"
                shape = getattr(layer, factor)["default"].shape
                sensitivity = torch.rand(shape, generator=torch.Generator().manual_seed(100 * i + j))
                uncertainty = torch.rand(shape, generator=torch.Generator().manual_seed(100 * i + j + 50))
                allocator.exp_avg_ipt[name], allocator.exp_avg_unc[name] = sensitivity, uncertainty
                getattr(delta, f"{factor}_sensitivity").copy_(sensitivity.view_as(getattr(delta, factor)))
                getattr(delta, f"{factor}_uncertainty").copy_(uncertainty.view_as(getattr(delta, factor)))
                getattr(layer, factor)["default"].fill_(1.0)
            delta.lora_E.fill_(1.0)
    pattern = allocator.mask_to_budget(peft_layers, budget)
    ranks = mask_to_budget(ours, budget)
    for i, delta in enumerate(ours.values()):
        theirs_kept = torch.tensor(pattern[f"layers.{i}.lora_E.default"])
        assert torch.equal(delta.kept, theirs_kept)
        assert torch.equal(delta.lora_E != 0, peft_layers.layers[i].lora_E["default"].view(-1) != 0)
    assert sum(ranks.values()) == budget


def test_our_adalora_defaults_are_peft_betas_and_the_papers_ranks():
    ours = AdaLoraConfig()
    theirs = peft.AdaLoraConfig(total_step=1)
    assert (ours.beta1, ours.beta2, ours.orthogonality_weight) == (theirs.beta1, theirs.beta2, theirs.orth_reg_weight)
    assert (ours.init_r, ours.target_r) == (12, 8)


def test_the_adalora_importance_smoothing_matches_peft_over_several_updates():
    config = peft_adalora_config()
    peft_layers = PeftAdaLoraLayers(config)
    allocator = RankAllocator(peft_layers, config, "default")
    ours = [SvdDelta((D_OUT, D_IN), R, alpha=8.0, orthogonality_weight=0.0) for _ in range(3)]
    for update in range(3):
        for i, (layer, delta) in enumerate(zip(peft_layers.layers, ours)):
            for j, factor in enumerate(("lora_A", "lora_E", "lora_B")):
                theirs = getattr(layer, factor)["default"]
                value = random_like(theirs, 1000 * update + 10 * i + j)
                grad = random_like(theirs, 5000 + 1000 * update + 10 * i + j)
                with torch.no_grad():
                    theirs.copy_(value)
                    getattr(delta, factor).copy_(value.view_as(getattr(delta, factor)))
                theirs.grad = grad
                getattr(delta, factor).grad = grad.view_as(getattr(delta, factor)).clone()
        allocator.update_ipt(peft_layers)
        for delta in ours:
            delta.update_importance(config.beta1, config.beta2)
    for i, delta in enumerate(ours):
        for factor in ("lora_A", "lora_E", "lora_B"):
            name = f"layers.{i}.{factor}.default"
            torch.testing.assert_close(getattr(delta, f"{factor}_sensitivity"),
                                       allocator.exp_avg_ipt[name].view_as(getattr(delta, factor)))
            torch.testing.assert_close(getattr(delta, f"{factor}_uncertainty"),
                                       allocator.exp_avg_unc[name].view_as(getattr(delta, factor)))
