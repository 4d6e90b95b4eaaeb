"""How close does `generator train --grow-modulation` start to the model it converts?

A bias added before a group norm cannot be rewritten exactly as a scale and shift after
it, so ``grow.grow_modulation`` fits the new projections on 1,024 training faces (the
same seeded batch training uses). Judged here on another seeded batch (its own faces,
timesteps and noise; about a tenth of its faces are also in the fitting batch): the relative RMS difference of the prediction from the old model's, by
quarter of the noise range, against the plain conversion (the old bias copied into the
shift, no scale), which is what the fit is for.

Usage: python benchmarks/bench_grow_modulation.py [--model M] [--data NPZ] [--rows 512]
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import REPO, finish, machine, save_results


def plain_conversion(model):
    """The old projections copied into the shift half, the scale half zero."""
    from facefoundry.generators.idiff_face.model import IDiffFaceModel

    state = model.state_dict()
    for key in state:
        if key.endswith(("time_emb_proj.weight", "time_emb_proj.bias")):
            state[key] = torch.cat([torch.zeros_like(state[key]), state[key]])
    plain = IDiffFaceModel(model.config.model_copy(update={"time_scale_shift": True}))
    plain.load_state_dict(state)
    return plain.eval()


def main() -> None:
    from facefoundry.generators.idiff_face.grow import grow_modulation
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.idiff_face.train import calibration_batch
    from facefoundry.generators.training_data import FaceTrainingSet

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "idiff-face-lfw"))
    parser.add_argument("--data", default=str(REPO / "data" / "lfw-devtrain-sface-64.npz"))
    parser.add_argument("--rows", type=int, default=512, help="held-out faces judged")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="grow-modulation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = FaceTrainingSet.load(args.data)
    old = IDiffFaceModel.from_pretrained(args.model)
    started = time.perf_counter()
    grown = grow_modulation(old, *calibration_batch(old.config, data))
    grow_seconds = time.perf_counter() - started
    noisy, timesteps, identity = calibration_batch(old.config, data, rows=args.rows, seed=1)
    with torch.no_grad():
        reference = old(noisy, timesteps, identity)
        predictions = {"fitted": grown(noisy, timesteps, identity)}
        predictions["plain"] = plain_conversion(old)(noisy, timesteps, identity)

    def error(prediction, rows) -> float:
        difference = (prediction[rows] - reference[rows]).pow(2).mean()
        return round((difference / reference[rows].pow(2).mean()).sqrt().item(), 4)

    quarters = old.config.num_train_timesteps // 4
    figures = {"machine": machine(), "model": args.model, "rows": args.rows}
    for name, prediction in predictions.items():
        figures[f"{name}_relative_error"] = error(prediction, slice(None))
        figures[f"{name}_relative_error_by_quarter"] = [
            error(prediction, (timesteps >= q * quarters) & (timesteps < (q + 1) * quarters))
            for q in range(4)
        ]
    figures["grow_seconds"] = round(grow_seconds, 1)
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
