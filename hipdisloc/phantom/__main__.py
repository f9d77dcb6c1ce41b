"""``python -m hipdisloc.phantom out_dir=DIR n_patients=N seed=S prevalence=P image_size=PX``"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hipdisloc.paths import CONFIG_DIR
from hipdisloc.phantom.cohort import generate
from hipdisloc.phantom.population import CohortSettings
from hipdisloc.phantom.risk import RiskCoefficients


def settings_from_config(cfg: DictConfig) -> CohortSettings:
    return CohortSettings(
        n_patients=int(cfg.n_patients),
        prevalence=float(cfg.prevalence),
        bilateral_rate=float(cfg.bilateral_rate),
        images_per_tha=float(cfg.images_per_tha),
        same_day_image_rate=float(cfg.same_day_image_rate),
        post_dislocation_image_rate=float(cfg.post_dislocation_image_rate),
        risk=RiskCoefficients(**{k: float(v) for k, v in cfg.risk.items()}),
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="phantom")
def main(cfg: DictConfig) -> None:
    summary = generate(cfg.out_dir, settings_from_config(cfg), seed=int(cfg.seed),
                       image_size=int(cfg.image_size), workers=int(cfg.workers),
                       overwrite=bool(cfg.overwrite))
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
