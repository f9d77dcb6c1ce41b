"""``python -m hipdisloc.phantom out_dir=DIR n_patients=N seed=S prevalence=P image_size=PX``"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hipdisloc.config import PhantomCommand, to_settings
from hipdisloc.paths import CONFIG_DIR
from hipdisloc.phantom.cohort import generate


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="phantom")
def main(cfg: DictConfig) -> None:
    c: PhantomCommand = to_settings(cfg)
    summary = generate(c.out_dir, c, seed=c.seed, image_size=c.image_size, workers=c.workers,
                       overwrite=c.overwrite)
    print(
        f"phantom (synthetic, not patient data): {summary.n_images} radiographs of "
        f"{summary.n_thas} THAs in {summary.n_patients} patients -> {summary.out_dir}\n"
        f"  included images: {summary.n_included_images}, dislocated share "
        f"{summary.prevalence_included_images:.2%} (target {summary.prevalence_target:.2%})\n"
        f"  oracle AUC (best achievable): image-only {summary.oracle_auc_image_only:.3f}, "
        f"full (image + clinical) {summary.oracle_auc_full:.3f}\n"
        f"  speed: {summary.images_per_second:.1f} images/s"
    )


if __name__ == "__main__":
    main()
