"""The paper's figures drawn from images: feature maps (`sweeper figure features`, its Figure 4) and zoomed crops
(`sweeper figure crops` and the report, its Figures 6-10).

Fig. 4 shows a ResNet-50 bottleneck beta_{m,n} and a VGG19 conv Phi_{i,j} on one image, from the extractors the
losses use; the crops show named images at a fixed box across trials, other methods, GT and bicubic.

A crop box is `x,y,w,h` in HR pixels (after `data.val_hr`); `DEFAULT_BOXES` holds one per image the paper's
figures show, other images get their central quarter. Random-init extractors are said in the figure's title.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sweeper.analysis import figures
from trainer.checkpoint import load_generator
from trainer.data import ValImage, load_set, val_pairs
from trainer.errors import UserError
from trainer.files import write_bytes_atomic
from trainer.image_sets import resolve_root
from trainer.images import to_rgb, to_uint8
from trainer.imresize import imresize
from trainer.losses.perceptual import imagenet_normalize, resnet_block, vgg_layer
from trainer.train import super_resolve

Box = tuple[int, int, int, int]  # x, y, width, height in HR pixels
DEFAULT_BOXES: dict[str, Box] = {  # a detailed region of each image the paper's figures zoom into
    "Set5/baby": (190, 200, 96, 96),  # the nostrils
    "Set5/butterfly": (96, 96, 64, 64),  # wing veins
    "Set14/lenna": (250, 240, 96, 96),  # the eyes
    "Set14/baboon": (130, 20, 96, 96),  # fur above the eye
    "Set14/comic": (60, 100, 64, 64),  # the face
    "Set14/zebra": (200, 150, 96, 96),  # stripes
}
SrFn = Callable[[ValImage], torch.Tensor]  # a validation pair -> float (1, 3, H, W) SR image in [0, 1]


def parse_image(text: str) -> tuple[str, str]:
    """`Set14/lenna` -> ("Set14", "lenna")."""
    set_name, _, stem = text.partition("/")
    if not set_name or not stem:
        raise UserError(f"image={text!r}: name an image as SET/NAME, e.g. Set14/lenna")
    return set_name, Path(stem).stem


def parse_box(text: str) -> Box:
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts) or int(parts[2]) <= 0 or int(parts[3]) <= 0:
        raise UserError(f"box={text!r}: give x,y,width,height in HR pixels, e.g. box=190,200,96,96")
    x, y, w, h = (int(p) for p in parts)
    return x, y, w, h


def find_pair(root: Path, image: str, upscale: int, val_hr: str) -> ValImage:
    set_name, stem = parse_image(image)
    pairs = val_pairs(root, set_name, upscale, val_hr)
    match = [p for p in pairs if Path(p.name).stem == stem]
    if not match:
        raise UserError(
            f"image={image}: no {stem} in {set_name} (it has {', '.join(Path(p.name).stem for p in pairs[:6])}...)"
        )
    return match[0]


def box_for(image: str, pair: ValImage, box: Box | None) -> Box:
    """The box to crop: the one given, else the image's default, else its central quarter; checked to fit."""
    h, w = pair.hr.shape[-2:]
    x, y, bw, bh = (
        box or DEFAULT_BOXES.get(f"{parse_image(image)[0]}/{parse_image(image)[1]}") or (w // 4, h // 4, w // 2, h // 2)
    )
    if x + bw > w or y + bh > h:
        raise UserError(f"box={x},{y},{bw},{bh} does not fit {image} ({w}x{h} after data.val_hr)")
    return x, y, bw, bh


def bicubic(pair: ValImage) -> torch.Tensor:
    return imresize(pair.lr, round(pair.hr.shape[-1] / pair.lr.shape[-1])).unsqueeze(0).float().div(255)


def generator_fn(checkpoint: Path) -> SrFn:
    """Super-resolve with a checkpoint's generator, on the CPU."""
    g = load_generator(checkpoint)
    return lambda pair: super_resolve(g, pair.lr, torch.device("cpu"))


def crops_png(
    images: list[str],
    columns: list[tuple[str, SrFn]],
    root: Path,
    upscale: int,
    val_hr: str,
    boxes: dict[str, Box],
    title: str,
) -> bytes:
    """Rows = images, columns = GT, then each (label, SR function): the same box of each, zoomed."""
    tiles: list[list[Any]] = []  # numpy HWC uint8 tiles
    for image in images:
        pair = find_pair(root, image, upscale, val_hr)
        x, y, w, h = box_for(image, pair, boxes.get(image))
        row = [to_rgb(pair.hr)[:, y : y + h, x : x + w].permute(1, 2, 0).numpy()]
        for _, fn in columns:
            row.append(to_uint8(fn(pair)[0, :, y : y + h, x : x + w]).permute(1, 2, 0).cpu().numpy())
        tiles.append(row)
    labels = [
        f"{image} [{','.join(map(str, box_for(image, find_pair(root, image, upscale, val_hr), boxes.get(image))))}]"
        for image in images
    ]
    return figures.comparison_grid(labels, ["GT (HR)", *(label for label, _ in columns)], tiles, title)


def feature_png(image: str, root: Path, block: str, vgg: str, channels: list[int], weights: str) -> bytes:
    """Fig. 4: the image, then channels `channels` (1-based) of beta_{m,n}'s and Phi_{i,j}'s feature maps."""
    set_name, stem = parse_image(image)
    match = [img for name, img in load_set(root, set_name) if Path(name).stem == stem]
    if not match:
        raise UserError(f"image={image}: no {stem} in {set_name}")
    x = imagenet_normalize(to_rgb(match[0]).float().div(255).unsqueeze(0))
    rows = []
    with torch.no_grad():
        for label, net in (
            (f"β{block[4]},{block[6:]} (ResNet-50)", resnet_block(weights, block)),
            (f"Φ{vgg[3]},{vgg[5:]} (VGG19)", vgg_layer(weights, vgg)),
        ):
            maps = net(x)[0]
            if max(channels) > maps.shape[0]:
                raise UserError(
                    f"channels={','.join(map(str, channels))}: {label} has {maps.shape[0]} channels (1-based numbers)"
                )
            rows.append((label, [maps[c - 1].numpy() for c in channels]))
    kind = (
        "ImageNet weights"
        if weights == "imagenet"
        else f"weights={weights}: random-init extractors, NOT the paper's features"
    )
    title = f"Fig. 4: feature maps on {image} ({kind})"
    return figures.feature_maps(
        to_rgb(match[0]).permute(1, 2, 0).numpy(), rows, [f"channel {c}" for c in channels], title
    )


def report_crops(
    images: list[str], labelled: list[tuple[str, Path]], config: dict, boxes: dict[str, Box], title: str
) -> bytes | None:
    """The report's crops figure for a table: GT, bicubic and each run's generator (`labelled`: label, checkpoint) at
    fixed boxes of `images` (default: the images of DEFAULT_BOXES in the runs' validation sets); None when a
    checkpoint or the data is not reachable from here (the report then shows the validation samples)."""
    data = config.get("data") or {}
    try:
        root = resolve_root(data.get("root") or None)
        images = (
            images
            or [
                k
                for k in DEFAULT_BOXES
                if k.split("/")[0] in data.get("val_sets", []) and (root / k.split("/")[0]).is_dir()
            ][:2]
        )
        if not images or not all(ckpt.is_file() for _, ckpt in labelled):
            return None
        columns = [("Bicubic", bicubic)] + [(label, generator_fn(ckpt)) for label, ckpt in labelled]
        return crops_png(images, columns, root, int(config.get("upscale", 4)), data.get("val_hr", "mod4"), boxes, title)
    except UserError as e:
        print(f"note: no fixed-box crops for {title}: {e}")
        return None


def parse_crop_tokens(tokens: list[str]) -> tuple[list[str], dict[str, Box], list[str]]:
    """The report's `crop=SET/NAME[:x,y,w,h]` tokens (repeatable): images, their boxes, and the other tokens."""
    images, boxes, rest = [], {}, []
    for token in tokens:
        if not token.startswith("crop="):
            rest.append(token)
            continue
        image, _, box = token.removeprefix("crop=").partition(":")
        parse_image(image)
        images.append(image)
        if box:
            boxes[image] = parse_box(box)
    return images, boxes, rest


def _keys(tokens: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in allowed:
            raise UserError(f"'{token}': this command takes {', '.join(f'{k}=' for k in allowed)}")
        out[key] = value
    return out


def features_main(tokens: list[str], data_root: Path | None, out: Path) -> None:
    """`sweeper figure features image=Set14/lenna [block=beta1_2] [vgg=phi3_3] [channels=1,64,256] [weights=imagenet|random]`."""
    keys = _keys(tokens, ("image", "block", "vgg", "channels", "weights"))
    if "image" not in keys:
        raise UserError("which image? add image=SET/NAME, e.g. image=Set14/lenna")
    channels = keys.get("channels", "1,64,256")
    if not all(c.strip().isdigit() and int(c) > 0 for c in channels.split(",")):
        raise UserError(f"channels={channels!r}: give 1-based channel numbers, e.g. channels=1,64,256")
    weights = keys.get("weights", "imagenet")
    png = feature_png(
        keys["image"],
        resolve_root(data_root),
        keys.get("block", "beta1_2"),
        keys.get("vgg", "phi3_3"),
        [int(c) for c in channels.split(",")],
        weights,
    )
    write_bytes_atomic(out, png)
    print(
        f"wrote {out}" + ("" if weights == "imagenet" else f" (weights={weights}: random-init extractors, labelled so)")
    )


def crops_main(tokens: list[str], data_root: Path | None, out: Path, upscale: int) -> None:
    """`sweeper figure crops image=Set5/baby[,Set14/lenna] [box=x,y,w,h] [checkpoint=LABEL:FILE ...] [data.val_hr=mod12]`:
    GT, bicubic and each checkpoint's SR at the same box."""
    keys = _keys([t for t in tokens if not t.startswith("checkpoint=")], ("image", "box", "data.val_hr"))
    if "image" not in keys:
        raise UserError("which images? add image=SET/NAME[,SET/NAME], e.g. image=Set14/lenna")
    images = [i.strip() for i in keys["image"].split(",") if i.strip()]
    if "box" in keys and len(images) != 1:
        raise UserError("box= applies to one image; give one image=, or leave box= out for each image's default")
    columns: list[tuple[str, SrFn]] = [("Bicubic", bicubic)]
    for token in (t for t in tokens if t.startswith("checkpoint=")):
        label, _, file = token.removeprefix("checkpoint=").rpartition(":")
        if not Path(file).is_file():
            raise UserError(f"{token}: give checkpoint=LABEL:FILE with an existing checkpoint file")
        columns.append((label or Path(file).parent.parent.name, generator_fn(Path(file))))
    boxes = {images[0]: parse_box(keys["box"])} if "box" in keys else {}
    val_hr = keys.get("data.val_hr", "mod12")
    write_bytes_atomic(
        out, crops_png(images, columns, resolve_root(data_root), upscale, val_hr, boxes, "Zoomed crops (as Figs. 6-10)")
    )
    print(f"wrote {out}")
