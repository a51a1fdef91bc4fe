"""Draw a Mask2Former model's predictions on images or a video, and optionally save them.

    python demo/demo.py \
        --config-file configs/synthetic/panoptic-segmentation/maskformer2_R18_synthetic.yaml \
        --input 'photos/*.jpg' some/folder one.png --output out/ --save-predictions \
        --opts MODEL.WEIGHTS output/synthetic/panoptic/model_final.pth

    python demo/demo.py --config-file ... --video-input in.mp4 --output out.mp4 \
        --batch-frames 4 --task panoptic --opts MODEL.WEIGHTS model_final.pth

``--input`` takes files, globs and folders; a named file that does not exist stops the demo,
files that exist but cannot be decoded are skipped with a warning. Each output picture shows
every selected task (``--task``, default: those the config switches on) side by side; a video
shows the first. ``--save-predictions`` also writes, under ``<output>/predictions/``, COCO
instance results (``instances.json``, RLE masks), COCO panoptic predictions (``panoptic.json``
+ ``panoptic/*.png``) and semantic label maps (``semantic/*.png``), in dataset category ids.
Class names and colours are those of ``DATASETS.TEST[0]``, which the config may declare itself
(``DATASETS.CUSTOM``, registered when the config is loaded).
"""

import argparse
import glob
import logging
import math
import os
import sys
import tempfile
import time

import cv2
import tqdm

from mask2former.backends import BACKENDS, BackendUnavailableError
from mask2former.config import UnknownConfigKeyError, load_config
from mask2former.data.utils import read_image_checked
from mask2former.utils.allocator import keep_freed_memory
from mask2former.utils.predictions import PredictionWriter
from mask2former.utils.visualization import save_rgb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import TASK_NAMES, VisualizationDemo  # noqa: E402

logger = logging.getLogger("mask2former.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 15.0  # when the video does not tell its frame rate


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
        "--task",
        nargs="+",
        choices=sorted(TASK_NAMES),
        help="tasks to predict and draw (default: those the config switches on)",
    )
    parser.add_argument(
        "--save-predictions",
        action="store_true",
        help="images: also write the predictions (COCO JSON, panoptic and semantic PNGs) to "
        "<output>/predictions/",
    )
    parser.add_argument(
        "--batch-frames", type=int, default=1, help="video frames predicted per forward pass"
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="lowest instance score drawn"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", *BACKENDS),
        default=None,
        help="where the network runs (default: $M2F_PREDICTOR_BACKEND, else auto: the fastest "
        "installed; onnxruntime / openvino export the network once per padded input size)",
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
    if _is_file_name(output, num_inputs):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")


def _is_file_name(output: str, num_inputs: int) -> bool:
    return num_inputs == 1 and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS


def ensure_writable_dir(folder: str) -> None:
    """Create ``folder`` and check that a file can be written in it; SystemExit otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise SystemExit(f"cannot write to the output folder '{folder}': {e}") from None


def run_on_images(
    demo: VisualizationDemo,
    paths: list[str],
    output: str | None,
    writer: PredictionWriter | None = None,
) -> int:
    """Predict, draw and save each image; returns how many were done (unreadable files are
    skipped with a warning)."""
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
        if writer is not None:
            writer.add(path, predictions)
        done += 1
    return done


def _open_video(source) -> cv2.VideoCapture:
    if isinstance(source, str) and not os.path.isfile(source):
        raise SystemExit(f"video file not found: '{source}'")
    video = cv2.VideoCapture(source)
    if not video.isOpened():
        raise SystemExit(f"cannot open video source {source!r} (not a video OpenCV can read)")
    return video


def run_on_video(demo: VisualizationDemo, source, output: str, batch_frames: int = 1) -> int:
    """Draw every frame of ``source`` (a file, or 0: the camera) into the video ``output``, at
    the input's frame rate and size. Returns the number of frames written."""
    video = _open_video(source)
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS)
    if not (fps > 0 and math.isfinite(fps)):
        fps = DEFAULT_FPS
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        video.release()
        raise SystemExit(f"cannot write the video '{output}' ({width}x{height}, mp4v)")
    written = 0
    start = time.perf_counter()
    try:
        for frame in tqdm.tqdm(
            demo.run_on_video(video, batch_frames=batch_frames), total=frames, desc="frames"
        ):
            writer.write(frame)
            written += 1
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        video.release()
        writer.release()
    if written == 0:
        raise SystemExit(f"no frame could be read from the video source {source!r}")
    elapsed = time.perf_counter() - start
    logger.info(
        "wrote %s: %d frames at %.1f fps in %.1fs (%.2f frames/s processed)",
        output, written, fps, elapsed, written / max(elapsed, 1e-9),
    )  # fmt: skip
    return written


def _check_image_inputs(paths: list[str], items: list[str]) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise SystemExit("input not found: " + ", ".join(f"'{p}'" for p in missing))
    if not paths:
        raise SystemExit("no input image found in " + ", ".join(f"'{i}'" for i in items))


def _build_demo(args) -> VisualizationDemo:
    try:
        cfg = load_config(args.config_file, args.opts)
    except (UnknownConfigKeyError, ValueError) as e:
        raise SystemExit(f"bad config {args.config_file!r}: {e}") from None
    try:
        return VisualizationDemo(
            cfg,
            confidence_threshold=args.confidence_threshold,
            tasks=args.task,
            batch_size=args.batch_frames,
            backend=args.backend,
        )
    except (FileNotFoundError, ValueError, BackendUnavailableError) as e:
        raise SystemExit(f"cannot build the model of {args.config_file!r}: {e}") from None


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    keep_freed_memory()  # M2F_KEEP_FREED_MEMORY=0 keeps malloc's defaults
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"config file not found: '{args.config_file}'")
    if args.batch_frames < 1:
        raise SystemExit(f"--batch-frames must be >= 1, got {args.batch_frames}")

    if args.input:
        paths = expand_inputs(args.input)
        _check_image_inputs(paths, args.input)
        if args.output:
            is_file = _is_file_name(args.output, len(paths))
            folder = os.path.dirname(os.path.abspath(args.output)) if is_file else args.output
            ensure_writable_dir(folder)
        elif args.save_predictions:
            raise SystemExit("--save-predictions needs --output (a folder)")
        else:
            logger.warning("no --output given: predictions are logged, not saved")
        demo = _build_demo(args)
        writer = None
        if args.save_predictions:
            writer = PredictionWriter(
                output_dir=os.path.join(folder, "predictions"),
                metadata=demo.metadata,
                tasks=demo.tasks,
            )
        done = run_on_images(demo, paths, args.output, writer)
        if writer is not None:
            writer.close()
        logger.info("%d of %d images done", done, len(paths))
        return 0 if done else 1

    if not args.output:
        raise SystemExit("--video-input and --webcam need --output (a video file, e.g. out.mp4)")
    if args.save_predictions:
        logger.warning("--save-predictions applies to --input images only; ignored for video")
    if args.video_input:
        _open_video(args.video_input).release()  # fail before building the model
    ensure_writable_dir(os.path.dirname(os.path.abspath(args.output)))
    demo = _build_demo(args)
    run_on_video(demo, 0 if args.webcam else args.video_input, args.output, args.batch_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
