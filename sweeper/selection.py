"""The validation metrics a study reports and picks its winner by: names, direction, tie-breaks."""

METRICS = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
TIE_BREAK = {"lpips": "psnr", "psnr": "lpips", "ssim": "psnr"}  # the second metric that orders equal scores
