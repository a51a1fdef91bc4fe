"""Draw a Mask2Former model's predictions on images or a video.

    python demo/demo.py \
        --config-file configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml \
        --input 'photos/*.jpg' some/folder one.png --output out/ \
        --opts MODEL.WEIGHTS output/synthetic/panoptic/model_final.pth

``--input`` takes files, globs and folders; files that cannot be read are skipped with a warning.
Each output picture shows every predicted task (panoptic, instance, semantic) side by side.
"""

import argparse
import glob
import logging
import os
import sys
import time

import cv2
import tqdm

from mask2former.data.utils import read_image_checked
from mask2former.engine.defaults import load_config
from mask2former.utils.visualization import save_rgb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import VisualizationDemo  # noqa: E402

logger = logging.getLogger("mask2former.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files, globs ('a/*.jpg') or folders")
    source.add_argument("--video-input", help="a video file")
    source.add_argument("--webcam", action="store_true", help="camera 0 (needs --output)")
    parser.add_argument(
        "--output",
        help="folder for the pictures (or, with one input, a file name); the video file for "
        "--video-input / --webcam",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="lowest instance score drawn"
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ..."
    )
    return parser


def expand_inputs(items: list[str]) -> list[str]:
    """Files, globs and folders (their image files, sorted) -> a list of paths."""
    paths = []
    for item in items:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            paths += [os.path.join(item, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif glob.has_magic(item):
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                logger.warning("no file matches %s", item)
            paths += matches
        else:
            paths.append(item)
    return paths


def _output_path(output: str, path: str, num_inputs: int) -> str:
    if num_inputs == 1 and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")


def run_on_images(demo: VisualizationDemo, paths: list[str], output: str | None) -> int:
    """Predict and save each image; returns how many were done (unreadable ones are skipped)."""
    done = 0
    for path in tqdm.tqdm(paths, desc="images", disable=len(paths) < 2):
        try:
            image = read_image_checked(path, format=demo.input_format)
        except (FileNotFoundError, ValueError) as e:
            logger.warning("skipping unreadable input: %s", e)
            continue
        start = time.perf_counter()
        predictions, picture = demo.run_on_image(image)
        found = ", ".join(f"{k}" for k in predictions)
        logger.info("%s: %s in %.2fs", path, found, time.perf_counter() - start)
        if output:
            save_rgb(_output_path(output, path, len(paths)), picture)
        done += 1
    return done


def run_on_video(demo: VisualizationDemo, source, output: str) -> None:
    video = cv2.VideoCapture(source)
    if not video.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    width, height = (
        int(video.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(video.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    fps = video.get(cv2.CAP_PROP_FPS) or 15.0
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame in tqdm.tqdm(demo.run_on_video(video), total=frames, desc="frames"):
            writer.write(frame)
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        video.release()
        writer.release()
    logger.info("wrote %s", output)


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    demo = VisualizationDemo(cfg, confidence_threshold=args.confidence_threshold)

    if args.input:
        paths = expand_inputs(args.input)
        if not args.output:
            logger.warning("no --output given: predictions are logged, not saved")
        done = run_on_images(demo, paths, args.output)
        logger.info("%d of %d images done", done, len(paths))
        return 0 if done or not paths else 1
    if not args.output:
        raise SystemExit("--video-input and --webcam need --output (a video file, e.g. out.mp4)")
    run_on_video(demo, 0 if args.webcam else args.video_input, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
