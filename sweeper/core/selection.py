"""The validation metrics a study reports and picks its winner by: names, direction, tie-breaks."""

METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
TIE_BREAK = {"lpips": "psnr", "psnr": "lpips", "ssim": "psnr"}  # the second metric that orders equal scores


def signed(metric: str, value: float | None) -> float:
    """`value` of `metric` as a sort key where smaller is better: negated where higher is better; a missing or
    NaN value ranks last (inf)."""
    if value is None or value != value:
        return float("inf")
    return -value if HIGHER_IS_BETTER[metric] else value


def rank(select_by: str, metrics: dict[str, float]) -> tuple[float, float]:
    """Sort key of a trial's mean metrics, best first: the selection metric, then its tie-break metric."""
    tie = TIE_BREAK[select_by]
    return signed(select_by, metrics.get(f"mean/{select_by}")), signed(tie, metrics.get(f"mean/{tie}"))
