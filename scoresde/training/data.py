"""Training data with no downloads: 2-D toys, scikit-learn's bundled 8×8 digits, user arrays,
folders of PNG/JPEG images and CIFAR-10's binary batches (which you download yourself).

Every draw takes a torch.Generator.  Image data live on [−1, 1] as 2k/(L − 1) − 1 for L levels
and are uniformly dequantized when sampled for training (see likelihood.dequantize).
"""
from __future__ import annotations

import math
import os

import torch

from scoresde.oracle import GaussianMixture

TOYS = ("ring", "moons", "swissroll", "checkerboard")
LABELLED_RINGS = {"ring-c4": 4, "ring-c8": 8}  # = oracle:gmm8c4, oracle:gmm8c8


class Dataset:
    """sample(n, generator) -> training batch; reference(n, generator) -> clean data for metrics;
    labelled data also sample_labelled(n, generator) -> (batch, class indices (n,)), the same draws.

    shape: one sample's shape; oracle: the exact mixture when there is one; levels: number of
    discrete levels for quantized data (None for continuous); class_names: the classes of
    labelled data (None otherwise), with `labels` (N,) beside a table, or a sampler that returns
    (x, labels)."""

    def __init__(self, name: str, shape: tuple, sampler=None, table: torch.Tensor | None = None,
                 oracle: GaussianMixture | None = None, levels: int | None = None,
                 labels: torch.Tensor | None = None, class_names=None, labelled_sampler=None):
        self.name, self.shape, self.oracle, self.levels = name, tuple(shape), oracle, levels
        if labelled_sampler is not None:
            sampler = lambda n, g: labelled_sampler(n, g)[0]  # noqa: E731 - the same draws, labels dropped
        self._sampler, self.table, self._labelled_sampler = sampler, table, labelled_sampler
        self.labels = labels
        self.class_names = tuple(class_names) if class_names is not None else None

    @property
    def device(self) -> torch.device:
        """Where draws are made: the table's device; samplers draw on the host."""
        return self.table.device if self.table is not None else torch.device("cpu")

    def to(self, device, max_bytes: float = float("inf")) -> "Dataset":
        """Move the table to `device` once when it takes at most max_bytes, so that a training step
        indexes it there (with a generator on that device) and copies nothing from the host.
        Sampler-based sets and larger tables stay where they are.  Returns self."""
        if self.table is not None and self.table.numel() * self.table.element_size() <= max_bytes:
            self.table = self.table.to(device)
            if self.labels is not None:
                self.labels = self.labels.to(device)
        return self

    def _drawn(self, n: int, generator: torch.Generator | None):
        """(x, y): n clean draws and their labels (None for unlabelled data)."""
        if self.table is not None:
            # indices are drawn where the generator lives (a device-resident table with a generator on
            # its device copies nothing; a CPU generator still works)
            idx = torch.randint(0, self.table.shape[0], (n,), **_on(generator))
            y = None if self.labels is None else self.labels[idx.to(self.labels.device)]
            return self.table[idx.to(self.table.device)], y
        if self._labelled_sampler is not None:
            return self._labelled_sampler(n, generator)
        return self._sampler(n, generator), None

    def reference(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._drawn(n, generator)[0]

    def head(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The first n clean samples of a finite set, in stored order (a fixed evaluation set), or
        n fresh draws when the data are a distribution."""
        return self.table[:n] if self.table is not None else self.reference(n, generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample_labelled(n, generator, need_labels=False)[0]

    def sample_labelled(self, n: int, generator: torch.Generator | None = None,
                        need_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(training batch, its class indices): the draws sample() makes, with their labels."""
        if need_labels and self.class_names is None:
            raise ValueError(f"data set {self.name!r} has no class labels")
        x, y = self._drawn(n, generator)
        if self.levels is not None:
            from scoresde.likelihood import dequantize
            x = dequantize(x, levels=self.levels, generator=generator)
        return x, y


def _on(g: torch.Generator | None) -> dict:
    """Draw with generator g on its own device (a CUDA generator cannot draw CPU tensors)."""
    return {"generator": g, "device": g.device if g is not None else None}


def _moons(n, g):
    k = torch.randint(0, 2, (n,), **_on(g))
    th = math.pi * torch.rand(n, **_on(g))
    x = torch.stack([torch.where(k == 0, th.cos(), 1 - th.cos()), torch.where(k == 0, th.sin(), 0.5 - th.sin())], 1)
    return 2 * (x - torch.tensor([0.5, 0.25], device=x.device)) + 0.1 * torch.randn(n, 2, **_on(g))


def _swissroll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, **_on(g)))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) / 5
    return x + 0.1 * torch.randn(n, 2, **_on(g))


def _checkerboard(n, g):
    x1 = 4 * torch.rand(n, **_on(g)) - 2
    x2 = torch.rand(n, **_on(g)) - 2 * torch.randint(0, 2, (n,), **_on(g))
    return 2 * torch.stack([x1, x2 + torch.floor(x1) % 2], 1)


DIGITS_TEST = 200  # the last 200 of scikit-learn's 1797 digits are held out


def digits(split: str = "train") -> Dataset:
    """scikit-learn's handwritten 8×8 digits (values 0…16, L = 17 levels) on [−1, 1]:
    'train' = the first 1597, 'test' = the last 200 (held out for likelihoods)."""
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("the digits data set needs scikit-learn: pip install 'scoresde[data]'") from None
    bunch = load_digits()
    k, y = torch.as_tensor(bunch.images, dtype=torch.float32), torch.as_tensor(bunch.target, dtype=torch.long)
    part = slice(None, -DIGITS_TEST) if split == "train" else slice(-DIGITS_TEST, None)
    return Dataset("digits" if split == "train" else "digits-test", (1, 8, 8), table=(2 * k[part] / 16 - 1)[:, None],
                   levels=17, labels=y[part], class_names=[str(c) for c in range(10)])


class ImageDataset(Dataset):
    """Integer images k ∈ {0 … L − 1}, stored as uint8 (N, C, H, W) and served on [−1, 1] as
    x = 2k/(L − 1) − 1.  Training draws are dequantized, 2(k + u)/L − 1 with u ~ U[0, 1), and with
    `flip` mirrored left–right with probability ½."""

    def __init__(self, name: str, images: torch.Tensor, levels: int = 256, flip: bool = False,
                 labels: torch.Tensor | None = None, class_names=None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"ImageDataset needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        super().__init__(name, tuple(images.shape[1:]), levels=levels, labels=labels, class_names=class_names)
        self.images, self.flip, self._loader = images, flip, None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device, max_bytes: float = float("inf")) -> "ImageDataset":
        """The uint8 images move to `device` once when they take at most max_bytes (a quarter of
        float rows): a step then draws, dequantizes and flips there, copying nothing from the host.
        A larger set stays on the host and its training batches reach a CUDA device as uint8
        through pinned buffers (PinnedLoader).  Returns self."""
        device = torch.device(device)
        if self.images.numel() <= max_bytes:
            self.images, self._loader = self.images.to(device), None
            if self.labels is not None:
                self.labels = self.labels.to(device)
        elif device.type == "cuda":
            self._loader = PinnedLoader(self.images, device)
        return self

    def _scaled(self, k: torch.Tensor) -> torch.Tensor:
        return k.to(torch.float32) * (2 / (self.levels - 1)) - 1

    def _indices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        idx = torch.randint(0, len(self), (n,), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        return idx.to(self.images.device)

    def reference(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._scaled(self.images[self._indices(n, generator)])

    def head(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._scaled(self.images[:n])

    def sample_labelled(self, n: int, generator: torch.Generator | None = None,
                        need_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        from scoresde.likelihood import dequantize

        if need_labels and self.class_names is None:
            raise ValueError(f"data set {self.name!r} has no class labels")
        idx = self._indices(n, generator)
        y = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        if self._loader is None:
            k = self.images[idx]
        else:  # host indices, uint8 copy; the noise is drawn on the device from a host-seeded generator
            k = self._loader(idx)
            generator = self._loader.generator.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
        x = dequantize(self._scaled(k), levels=self.levels, generator=generator)
        if self.flip:
            mirror = torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")
            x = torch.where((mirror < 0.5).to(x.device)[:, None, None, None], x.flip(-1), x)
        return x, y


class PinnedLoader:
    """loader(idx) -> images[idx] on a CUDA device, for image sets too large to keep there.

    Rows are gathered on the host into one of two page-locked buffers and copied asynchronously,
    so the host never waits for the copy; a buffer is refilled only after its previous copy has
    finished (a CUDA event per buffer), which makes alternating two of them safe."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        self.images, self.device = images, device
        self.generator = torch.Generator(device=device)
        self._bufs, self._done, self._i = [None, None], [None, None], 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        self._i = i = 1 - self._i
        shape = (idx.shape[0], *self.images.shape[1:])
        if self._done[i] is not None:
            self._done[i].synchronize()
        if self._bufs[i] is None or self._bufs[i].shape != shape:
            self._bufs[i] = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        torch.index_select(self.images, 0, idx.cpu(), out=self._bufs[i])
        out = self._bufs[i].to(self.device, non_blocking=True)
        self._done[i] = torch.cuda.Event()
        self._done[i].record()
        return out


# -- reading files --------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CHANNEL_SIZES = (1, 3)  # what layout "auto" takes for a channel axis: gray, RGB (RGBA: set the layout)
CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_image_folder(folder: str) -> torch.Tensor:
    """Every .png/.jpg/.jpeg in `folder`, sorted by name, as uint8 (N, C, H, W): C = 1 when every
    image is grayscale, else 3 (RGB; palettes expanded, alpha dropped).  Sizes must agree."""
    import numpy as np
    from PIL import Image

    if not os.path.isdir(folder):
        raise ValueError(f"data.path {folder!r}: no such folder (data.name = 'images' reads a folder of PNG/JPEG files)")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"data.path {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    out, gray, first = None, True, None
    for i, name in enumerate(files):
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise ValueError(f"image {path!r} has {im.mode} pixels; only 8-bit images are supported")
                is_gray = im.mode in ("1", "L", "LA")
                pix = np.asarray(im.convert("L" if is_gray else "RGB"))
        except ValueError:
            raise
        except Exception as e:  # Pillow reports broken files as OSError, SyntaxError, struct errors, ...
            raise ValueError(f"image {path!r} cannot be read ({type(e).__name__}: {e})") from None
        if out is None:
            first = path
            out = np.empty((len(files), *pix.shape[:2], 3), dtype=np.uint8)
        elif pix.shape[:2] != out.shape[1:3]:
            raise ValueError(f"image {path!r} is {pix.shape[1]}×{pix.shape[0]} but {first!r} is "
                             f"{out.shape[2]}×{out.shape[1]}; every image must have the same size")
        gray &= is_gray
        out[i] = pix[..., None] if is_gray else pix
    return torch.from_numpy(out[..., :1] if gray else out).permute(0, 3, 1, 2).contiguous()


def read_labelled_image_folder(folder: str):
    """(images, labels, class names): a folder of images is unlabelled (labels and names None); a
    folder holding no images but sub-folders of them is one class per sub-folder (sorted by name),
    its samples in a fixed shuffled order (seed 0), so that data.holdout's last k mix the classes."""
    if not os.path.isdir(folder):
        return read_image_folder(folder), None, None  # its error message
    top = [f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)]
    subs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                  and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(os.path.join(folder, d))))
    if top or not subs:
        return read_image_folder(folder), None, None
    parts = [read_image_folder(os.path.join(folder, d)) for d in subs]
    sizes = {p.shape[2:] for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"data.path {folder!r}: the class sub-folders hold images of different sizes "
                         f"({', '.join(f'{h}×{w}' for h, w in sorted(sizes))}); every image must have the same size")
    if any(p.shape[1] == 3 for p in parts):  # RGB wins: grayscale classes are repeated over 3 channels
        parts = [p.expand(-1, 3, -1, -1) for p in parts]
    images = torch.cat(parts)
    labels = torch.cat([torch.full((p.shape[0],), c, dtype=torch.long) for c, p in enumerate(parts)])
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    return images[order].contiguous(), labels[order], subs


def read_cifar10(folder: str, split: str = "train", labels: bool = False):
    """CIFAR-10's binary batches as uint8 (N, 3, 32, 32): data_batch_1…5.bin for 'train' (those
    present), test_batch.bin for 'test'.  Each 3073-byte record is a label byte (0…9, CIFAR_CLASSES;
    returned as (images, labels (N,)) when labels=True) and the pixels channels first; a file whose
    length is not a multiple of 3073, or a label byte above 9, is refused."""
    import numpy as np

    if not os.path.isdir(folder):
        raise ValueError(f"data.path {folder!r}: no such folder (data.name = 'cifar10' reads the folder "
                         f"cifar-10-batches-bin from {CIFAR_URL})")
    wanted = CIFAR_TRAIN if split == "train" else (CIFAR_TEST,)
    present = [os.path.join(folder, f) for f in wanted if os.path.isfile(os.path.join(folder, f))]
    if not present:
        raise ValueError(f"data.path {folder!r} holds none of {', '.join(wanted)} (CIFAR-10's binary version, "
                         f"{CIFAR_URL})")
    batches, ys = [], []
    for path in present:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise ValueError(f"{path!r} has {raw.size} bytes, not a positive multiple of CIFAR-10's "
                             f"{CIFAR_RECORD}-byte record (1 label byte + 3072 pixel bytes); is the file complete?")
        rec = raw.reshape(-1, CIFAR_RECORD)
        if labels and rec[:, 0].max() >= len(CIFAR_CLASSES):
            raise ValueError(f"{path!r} has a label byte {int(rec[:, 0].max())}; CIFAR-10's are 0…9")
        batches.append(rec[:, 1:].reshape(-1, 3, 32, 32))
        ys.append(rec[:, 0])
    images = torch.from_numpy(np.concatenate(batches))
    return (images, torch.from_numpy(np.concatenate(ys).astype(np.int64))) if labels else images


def _read_npy(path: str):
    """The raw numpy array in a .npy or .npz file; pickled objects are refused.  From a .npz:
    the array named by 'file.npz:NAME', else 'x', else its only array; several arrays and none
    named x is an error that lists them."""
    import numpy as np

    path, sep, key = path.partition(".npz:")
    path += ".npz" if sep else ""
    if not os.path.exists(path):
        raise ValueError(f"data file {path!r}: no such file")
    if not path.endswith((".npy", ".npz")):
        raise ValueError(f"data file {path!r}: expected a .npy or .npz file")
    names = []
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                names = z.files
                key = key or ("x" if "x" in names or len(names) != 1 else names[0])
                arr = z[key] if key in names else None
        else:
            arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"data file {path!r} cannot be read: {e}") from None
    if arr is None:
        if not names:
            raise ValueError(f"data file {path!r} holds no arrays")
        raise ValueError(f"data file {path!r} has no array {key!r}; it holds {', '.join(names)}: choose one as "
                         f"{path}:NAME, e.g. {path}:{names[0]}")
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise ValueError(f"data file {path!r}: need a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    return arr


def load_array(path: str) -> torch.Tensor:
    """A finite float array (N >= 1, ...) from a .npy or .npz file (see _read_npy for which
    array of a .npz); pickled objects are refused."""
    x = torch.as_tensor(_read_npy(path), dtype=torch.float32)
    if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0 or not torch.isfinite(x).all():
        raise ValueError(f"data file {path!r}: need a finite array of shape (N >= 1, ...), got {tuple(x.shape)}")
    return x


def array_to_images(arr, where: str, layout: str = "auto", levels: int = 256) -> torch.Tensor:
    """Integer levels k ∈ {0 … L − 1} in an integer or integer-valued float array, shaped (N, H, W),
    (N, H, W, C) or (N, C, H, W), as uint8 (N, C, H, W).  layout 'auto' finds the channel axis:
    the first or last axis of size 1 or 3, and an error when both or neither are."""
    import numpy as np

    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if layout == "auto":
            first, last = arr.shape[1] in CHANNEL_SIZES, arr.shape[3] in CHANNEL_SIZES
            if first == last:
                why = "both could be the channel axis" if first else "neither end has 1 or 3 channels"
                raise ValueError(f"{where}: cannot tell whether shape {arr.shape} is (N, H, W, C) or (N, C, H, W) "
                                 f"({why}); set data.layout = 'nhwc' or 'nchw'")
            layout = "nhwc" if last else "nchw"
        if layout == "nhwc":
            arr = arr.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{where}: images need shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {arr.shape}")
    if arr.shape[0] == 0 or arr.size == 0:
        raise ValueError(f"{where}: the array holds no images (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: the array has NaN or infinite values")
        frac = np.abs(arr - np.round(arr)).max()
        if frac > 0:
            raise ValueError(f"{where}: data.levels = {levels} reads a float array as integer levels "
                             f"0…{levels - 1}, but it has non-integer values (off by up to {frac:.3g}); "
                             f"for continuous data already on [-1, 1] leave data.levels = 0")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: cannot read images from a {arr.dtype} array")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > levels - 1:
        raise ValueError(f"{where}: values span [{lo:g}, {hi:g}], outside the levels 0…{levels - 1} of "
                         f"data.levels = {levels}" + ("; for continuous data already on [-1, 1] leave data.levels = 0"
                                                      if np.issubdtype(arr.dtype, np.floating) else ""))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))


def fit_images(images: torch.Tensor, size: int, fit: str = "crop") -> torch.Tensor:
    """uint8 images (N, C, H, W) brought to size × size: 'crop' takes the central square of that
    size; 'resize' takes the largest central square and resamples it (antialiased bilinear, which
    averages with non-negative weights, then rounded back to the integer levels)."""
    H, W = images.shape[-2:]
    if size == 0 or (H, W) == (size, size):
        return images
    if fit == "crop":
        if size > min(H, W):
            raise ValueError(f"data.image_size = {size} is larger than the {H}×{W} images; use data.fit = 'resize'")
        top, left = (H - size) // 2, (W - size) // 2
        return images[..., top:top + size, left:left + size].contiguous()
    if fit != "resize":
        raise ValueError(f"data.fit must be 'crop' or 'resize', got {fit!r}")
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    square = images[..., top:top + s, left:left + s]
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], 1024):  # bounded float memory
        chunk = torch.nn.functional.interpolate(square[i:i + 1024].float(), size=(size, size), mode="bilinear",
                                                antialias=True, align_corners=False)
        out[i:i + 1024] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out


# -- building data sets ---------------------------------------------------------------------------
IMAGE_SOURCES = ("images", "cifar10")
SPLITS = ("train", "test", "all")


def _split_last(x: torch.Tensor, holdout: int, split: str, where: str) -> torch.Tensor:
    """'train': all but the last `holdout` rows; 'test': the last `holdout`; 'all': every row."""
    if split == "all":
        return x
    if holdout and x.shape[0] - holdout < 2:
        raise ValueError(f"data.holdout = {holdout} leaves {x.shape[0] - holdout} of {where}'s {x.shape[0]} samples "
                         f"to train on; need at least 2")
    if split == "test":
        if not holdout:
            raise ValueError(f"{where} has no held-out split; train with data.holdout = k (the last k samples)")
        return x[-holdout:]
    return x[:x.shape[0] - holdout]


def _builtin(name: str, split: str) -> Dataset:
    """The data sets that need no path: toys draw afresh for every split; digits hold out 200."""
    if name == "ring":
        oracle = GaussianMixture.ring()
        return Dataset("ring", (2,), sampler=lambda n, g: oracle.sample(n, generator=g), oracle=oracle)
    if name in LABELLED_RINGS:  # the ring's modes grouped into classes; label = the class of the mode drawn
        oracle = GaussianMixture.ring(classes=LABELLED_RINGS[name])

        def labelled(n, g):
            x, k = oracle.sample_components(n, generator=g)
            return x, oracle.classes.to(k.device)[k]
        return Dataset(name, (2,), labelled_sampler=labelled, oracle=oracle, class_names=oracle.class_names)
    toys = {"moons": _moons, "swissroll": _swissroll, "checkerboard": _checkerboard}
    if name in toys:
        return Dataset(name, (2,), sampler=toys[name])
    if name == "digits":
        return digits("test" if split == "test" else "train")
    raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(TOYS)}, ring-c4, ring-c8, digits, digits-test, "
                     f"file, images, cifar10")


def _continuous_file(path: str, split: str, holdout: int, where: str) -> Dataset:
    x = load_array(path)
    labels, names = read_npz_labels(path, x.shape[0])
    x = _split_last(x, holdout, split, where)
    if split == "train" and x.shape[0] < 2:
        raise ValueError(f"{where}: need at least 2 samples to train on, got {x.shape[0]}")
    if labels is not None:
        labels = _split_last(labels, holdout, split, where)
    return Dataset(os.path.basename(path) + ("-test" if split == "test" else ""), tuple(x.shape[1:]), table=x,
                   labels=labels, class_names=names)


def check_label_array(y, n: int, where: str) -> tuple[torch.Tensor, list[str]]:
    """Class labels: n integers 0 … C−1 (C = max + 1, every class named by its index) as a long
    tensor, with the names; a ValueError naming the fault otherwise."""
    import numpy as np

    y = np.asarray(y)
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise ValueError(f"{where}: class labels must be integers, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{where}: need one class label per sample, shape ({n},), got {y.shape}")
    if n and y.min() < 0:
        raise ValueError(f"{where}: class labels must lie in 0…C−1, got {int(y.min())}")
    C = int(y.max()) + 1 if n else 0
    return torch.as_tensor(y.astype(np.int64)), [str(c) for c in range(C)]


def read_npz_labels(path: str, n: int):
    """The class labels of a .npz that holds a `y` array beside its data ((None, None) otherwise)."""
    import numpy as np

    path, sep, key = path.partition(".npz:")
    if not (sep or path.endswith(".npz")) or key == "y":
        return None, None
    path += ".npz" if sep else ""
    with np.load(path, allow_pickle=False) as z:
        if "y" not in z.files:
            return None, None
        y = z["y"]
    return check_label_array(y, n, f"data file {path!r}, array y")


def make_dataset(name: str, path: str | None = None, split: str = "train", *, holdout: int = 0,
                 layout: str = "auto", levels: int = 0, image_size: int = 0, fit: str = "crop",
                 flip: bool = False) -> Dataset:
    """'ring' (the 8-mode oracle), 'moons', 'swissroll', 'checkerboard', 'digits', or with path:
    'file' (.npy/.npz), 'images' (a folder of PNG/JPEG), 'cifar10' (CIFAR-10's binary batches).

    split: 'train', 'test' (held out: digits' last 200, cifar10's test_batch.bin, or the last
    `holdout` samples of a file or folder) or 'all'; toys draw fresh samples for every split.
    Image options: layout of a file's array (auto | nhwc | nchw), levels L (0: 256 for integer
    arrays, continuous for float ones), image_size with fit (crop | resize), flip (training only).
    An option that cannot apply to the data is an error, never silently ignored.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if name.endswith("-test") and name != "-test":  # 'digits-test' and friends name the held-out split
        name, split = name[:-5], "test"
    used = [k for k, v in dict(path=bool(path), holdout=bool(holdout), layout=layout != "auto", levels=bool(levels),
                               image_size=bool(image_size), fit=fit != "crop", flip=flip).items() if v]
    if name not in IMAGE_SOURCES + ("file",):
        if used:
            raise ValueError(f"data.{used[0]} does not apply to data.name = {name!r}; it is for file, images "
                             f"and cifar10" + (" (digits hold out their last 200 themselves)" if name == "digits" else ""))
        return _builtin(name, split)
    if not path:
        what = {"file": "a .npy or .npz file", "images": "a folder of PNG/JPEG images",
                "cifar10": "the folder cifar-10-batches-bin"}[name]
        raise ValueError(f"data.name = {name!r} needs data.path ({what})")
    if levels and not 2 <= levels <= 256:
        raise ValueError(f"data.levels must be 0 (automatic) or between 2 and 256, got {levels}")
    where = f"data file {path!r}" if name == "file" else f"data.path {path!r}"
    if name == "file":
        import numpy as np

        arr = _read_npy(path)
        if not levels and not np.issubdtype(arr.dtype, np.integer):  # continuous data, used as given
            image_only = [k for k in used if k not in ("path", "holdout")]
            if image_only:
                raise ValueError(f"data.{image_only[0]} applies to images, but {where} is a float array taken as "
                                 f"continuous data on [-1, 1]; store integer levels (uint8) or set data.levels")
            return _continuous_file(path, split, holdout, where)
        levels, label = levels or 256, os.path.basename(path)
        images = array_to_images(arr, where, layout, levels)
        labels, names = read_npz_labels(path, images.shape[0])
        images = _split_last(images, holdout, split, where)
    else:
        for key in ("layout", "levels") + (("holdout",) if name == "cifar10" else ()):
            if key in used:
                raise ValueError(f"data.{key} does not apply to data.name = {name!r}" +
                                 (": its held-out split is test_batch.bin" if key == "holdout" else
                                  ": its pixels are 8-bit, 256 levels, in a known layout"))
        levels = 256
        if name == "images":
            label = f"images:{os.path.basename(os.path.normpath(path))}"
            images, labels, names = read_labelled_image_folder(path)
            images = _split_last(images, holdout, split, where)
        else:
            label, names = "cifar10", CIFAR_CLASSES
            images, labels = read_cifar10(path, "test" if split == "test" else "train", labels=True)
            if split == "all":
                more = read_cifar10(path, "test", labels=True)
                images, labels = torch.cat([images, more[0]]), torch.cat([labels, more[1]])
    if labels is not None and name != "cifar10":
        labels = _split_last(labels, holdout, split, where)
    images = fit_images(images, image_size, fit)
    return ImageDataset(label + ("-test" if split == "test" else ""), images, levels, flip=flip and split == "train",
                        labels=labels, class_names=names)


def data_from_config(data_cfg, split: str = "train") -> Dataset:
    """make_dataset from a config's [data] section (any object with its attributes)."""
    c = data_cfg
    return make_dataset(c.name, c.path or None, split, holdout=c.holdout, layout=c.layout, levels=c.levels,
                        image_size=c.image_size, fit=c.fit, flip=c.flip)


def has_test_split(data_cfg) -> bool:
    """Whether a config's data have a held-out split (digits, cifar10, or data.holdout > 0)."""
    return data_cfg.name in ("digits", "cifar10") or data_cfg.holdout > 0


def evaluation_reference(data_cfg, train: Dataset, n: int = 20000, seed: int = 12345) -> tuple[torch.Tensor, str]:
    """Clean data to score a model's samples against, and what they are: for image data the
    held-out split when there is one, else the training images (distinct images, in stored
    order, at most n); for other data n draws from the training distribution (the 200 held-out
    digits are too few for two disjoint reference samples)."""
    if isinstance(train, ImageDataset) or (has_test_split(data_cfg) and data_cfg.name != "digits"):
        if has_test_split(data_cfg):
            held = data_from_config(data_cfg, "test")
            return held.head(n), f"{held.name} (held out)"
        return train.head(n), f"{train.name} (training images; no held-out split)"
    return train.reference(n, torch.Generator().manual_seed(seed)), f"{train.name} (training draws)"
