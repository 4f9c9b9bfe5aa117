"""The sparse kernels of sparse decoding and the `auto` rule that chooses between them and dense.
Pure torch.

A masked matrix runs as `W x` with W in torch's CSR layout (MKL's sparse-dense product on CPU):
`addmm(bias, W_csr, x^T)^T`. Measured on this project's CPU (1 thread, a 4096x1024 matrix, 250
frames), that form was several times faster than `F.linear(x, W_csr, bias)`, which torch routes
through a slower sparse path; CSR beat dense at 90% pruned and lost to it at 50%.

8x1 blocks (8 consecutive inputs of a row, `prune --method block-l2`) also run as CSR: torch's CPU
block-sparse (BSR) product goes to MKL, which refuses blocks that are not square ("MKL Sparse
doesn't support matrices with non-square blocks"), so a (1, 8) BSR layout has no CPU kernel; a
block pattern is a CSR pattern whose rows hold runs of 8.

MKL's sparse product exists for float32 and float64 only (not float16 or bfloat16), and only on CPU
(`SPARSE_DTYPES`, `sparse_kernel_runs`).
"""
import statistics
import time
import warnings
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F

SPARSE_DTYPES = (torch.float32, torch.float64)
"""The weight dtypes torch's CPU CSR product (MKL) takes."""
FRAMES_PER_PRODUCT = 32
"""Rows of the input one sparse product takes. MKL's CSR product slows down per frame as its dense
operand grows: measured on this project's CPU (1 thread, 90% pruned, 750 frames, a 15 s
utterance), XLS-R's 1024x4096 projection took over twice dense's time in one product and under
half of it in pieces of 32 frames, which were the fastest of 16 to 1024 for every encoder shape
(4096x1024, 1024x4096, 1024x1024) at 200 and 750 frames."""
AUTO_FRAMES = 250
"""Rows of the input `auto` times each matrix on: 5 s of audio at wav2vec2's 20 ms frames, the
utterance length of the measurements the decision rule was chosen on."""
AUTO_REPETITIONS = 5
"""Timed runs of each kernel per matrix (after one untimed warm-up run each), alternating."""
AUTO_MARGIN = 0.9
"""`auto` takes the sparse kernel only where its median time is below this share of dense's: a
kernel within timing noise of dense keeps dense, so `auto` does not trade dense for a kernel that
is as fast only by chance."""


def sparse_kernel_runs(weight: torch.Tensor) -> bool:
    """Whether torch has a CPU CSR product for this weight's device and dtype."""
    return weight.device.type == "cpu" and weight.dtype in SPARSE_DTYPES


def csr_of(weight: torch.Tensor) -> torch.Tensor:
    """The matrix in CSR layout, holding its nonzero entries only (pruned weights are exact zeros,
    so the pattern is the mask's, less any kept weight that is itself 0), with int32 indices where
    they fit: half the index memory of torch's int64 default, and torch's CPU CSR product takes
    them at the same speed (measured on a 4096x1024 matrix at 90%, 1 thread). torch's note that its
    CSR support is in beta is not passed on: what is used here is tested against dense."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.detach().to_sparse_csr()
        if max(weight.shape[1], csr._nnz()) >= 2 ** 31:
            return csr
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                       csr.values(), size=csr.shape, check_invariants=False)


def sparse_linear(input: torch.Tensor, weight_csr: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """`F.linear(input, W, bias)` with W in CSR layout, for an input of any leading shape, in
    pieces of `FRAMES_PER_PRODUCT` rows. The result is contiguous, as a dense projection's is: the
    next dense product, handed a transposed view of fairseq's time-major activations, ran one small
    product per frame, many times slower."""
    rows = input.reshape(-1, input.shape[-1])
    products = []
    for chunk in rows.split(FRAMES_PER_PRODUCT):
        if bias is None:
            products.append(torch.sparse.mm(weight_csr, chunk.t()).t())
        else:
            products.append(torch.addmm(bias.unsqueeze(1), weight_csr, chunk.t()).t())
    return torch.cat(products).reshape(*input.shape[:-1], weight_csr.shape[0])


class KernelTimes(NamedTuple):
    """Median seconds of each kernel on one matrix, and the choice the rule made from them."""

    sparse: float
    dense: float

    @property
    def sparse_is_faster(self) -> bool:
        return prefers_sparse(self.sparse, self.dense)


def prefers_sparse(sparse_seconds: float, dense_seconds: float) -> bool:
    """The `auto` rule: sparse only where clearly faster (AUTO_MARGIN), never on a tie."""
    return sparse_seconds < AUTO_MARGIN * dense_seconds


def time_kernels(weight: torch.Tensor, weight_csr: torch.Tensor, bias: Optional[torch.Tensor],
                 frames: int = AUTO_FRAMES, repetitions: int = AUTO_REPETITIONS,
                 clock: Callable[[], float] = time.perf_counter) -> KernelTimes:
    """Times the sparse and the dense product of one matrix on a fixed input of `frames` rows
    (drawn from a generator of its own, so the model's random state is untouched), with torch's
    current thread count: one warm-up run each, then `repetitions` alternating timed runs; the
    medians."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(frames, weight.shape[1], generator=generator, dtype=weight.dtype)
    kernels = {"sparse": lambda: sparse_linear(input, weight_csr, bias), "dense": lambda: F.linear(input, weight, bias)}
    seconds: dict = {name: [] for name in kernels}
    with torch.no_grad():
        for run in kernels.values():
            run()
        for _ in range(repetitions):
            for name, run in kernels.items():
                start = clock()
                run()
                seconds[name].append(clock() - start)
    medians: List[float] = [statistics.median(seconds[name]) for name in ("sparse", "dense")]
    return KernelTimes(*medians)
