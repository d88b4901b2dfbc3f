"""tasks.allocator: with the thresholds fixed, the SAM decoder's steady state stops page-faulting.

Each case runs in a fresh interpreter: malloc settings are process-wide.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

#: decode 4-box chunks on the official decoder's shape (256 x 64 x 64 image side), report the page
#: faults of the third pass (the first two warm up) and whether the settings were applied
SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from segflow.tasks.stages.allocator import keep_freed_memory
applied = keep_freed_memory() if {tune} else None
from segflow.tasks.stages.sam_checkpoint import build_sam
from segflow.tasks.stages.sam_decoder import SharedImage, decode_tokens
torch.manual_seed(0)
sam = build_sam(dict(img_size=1024, patch_size=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                     encoder_global_attn_indexes=[0], window_size=8)).eval()
with torch.inference_mode():
    boxes = torch.tensor([[100.0, 100, 300, 400], [500, 200, 700, 300], [50, 600, 400, 900], [600, 600, 900, 1000]])
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    shared = SharedImage(sam.mask_decoder, torch.randn(1, 256, 64, 64), sam.prompt_encoder.get_dense_pe(), dense[:1])
    for _ in range(3):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            decode_tokens(sam.mask_decoder, shared, sparse, False)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(applied, faults)
"""


def _faults(*tunes: bool) -> list[tuple[str, int]]:
    """Each case in its own interpreter, the cases side by side (their start-up is most of the time)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(root=str(ROOT), tune=t)], stdout=subprocess.PIPE, text=True
        )
        for t in tunes
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        if p.returncode:
            raise AssertionError(f"the allocator script failed ({p.returncode})")
        applied, faults = out.split()[-2:]
        results.append((applied, int(faults)))
    return results


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_fixed_thresholds_stop_the_decoders_page_faults():
    (applied, tuned), (_, default) = _faults(True, False)
    assert applied == "True"
    # the negative control: glibc's adaptive thresholds keep handing the decoder fresh pages (4 MB a tensor,
    # 1,024 faults each); with the thresholds fixed, freed memory is reused
    assert default > 4 * 1024, default
    # tuned: 0-1 faults here; one CI run of ~10 saw 3,200 (against 58,000), the other test process busy beside it
    assert tuned < default / 10, (tuned, default)


def test_the_setting_is_applied_once_and_reports_the_same():
    from segflow.tasks.stages import allocator

    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first
    assert first == (allocator._glibc() is not None)  # mallopt accepted both values wherever glibc is
