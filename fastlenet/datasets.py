"""The data sets LeNet-5 trains on here: MNIST, Fashion-MNIST and KMNIST.

All three are four IDX files of the same names and sizes (60,000 training and 10,000
test images of 28 x 28, ten classes). Each has its own mirrors, checksums, class names
and cache folder; data.py finds, downloads and verifies any of them the same way.
"""

from dataclasses import dataclass
from typing import NamedTuple

from .errors import DataError


class IdxFile(NamedTuple):
    """What one genuine file is: its shape, and how it is recognised. `sha256` is of the
    decompressed IDX bytes (any gzip wrapper of the data passes); `md5` is of the .gz file
    exactly as its authors publish it (only that file passes)."""

    sha256: str | None
    shape: tuple
    md5: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str           # the --dataset value and the cache folder's name
    title: str          # in messages and figure titles
    files: dict         # IDX file name -> IdxFile
    mirrors: tuple      # URL prefixes, tried in order
    classes: tuple      # label -> class name
    fit: int            # predict: the side of the box a drawing's longest side is scaled to
    centre: str         # predict: "mass" (MNIST's centring) or "box"


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
SHAPES = {TRAIN_IMAGES: (60000, 28, 28), TRAIN_LABELS: (60000,), TEST_IMAGES: (10000, 28, 28), TEST_LABELS: (10000,)}


def published(md5s):
    """IdxFiles known by the MD5s their authors publish for the .gz files."""
    return {name: IdxFile(None, SHAPES[name], md5) for name, md5 in md5s.items()}


MNIST = Dataset(
    "mnist", "MNIST",
    # SHA-256 of the payload, measured on the genuine files; the MD5s are LeCun's .gz files'
    {TRAIN_IMAGES: IdxFile("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", SHAPES[TRAIN_IMAGES],
                           "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
     TRAIN_LABELS: IdxFile("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", SHAPES[TRAIN_LABELS],
                           "d53e105ee54ea40749a09fcbcd1e9432"),
     TEST_IMAGES: IdxFile("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", SHAPES[TEST_IMAGES],
                          "9fb629c4189551a2d022fa330f9573f3"),
     TEST_LABELS: IdxFile("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", SHAPES[TEST_LABELS],
                          "ec29112dd5afa0611ce80d1b7f02629c")},
    # the original site is last: it often answers 403
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
     "http://yann.lecun.com/exdb/mnist/"),
    tuple("0123456789"), fit=20, centre="mass")  # LeCun: digits fit 20 x 20, centred by centre of mass

FASHION_MNIST = Dataset(
    "fashion-mnist", "Fashion-MNIST",
    published({TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d", TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
               TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79", TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310"}),
    ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
     "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    fit=28, centre="box")  # Zalando: trimmed, longest side resized to 28

KMNIST = Dataset(
    "kmnist", "KMNIST",
    published({TRAIN_IMAGES: "bdb82020997e1d708af4cf47b453dcf7", TRAIN_LABELS: "e144d726b3acfaa3e44228e80efcd344",
               TEST_IMAGES: "5c965bf0a639b31b8f53240b1b52f4d7", TEST_LABELS: "7320c461ea6c1c855c0b718fb2a4b134"}),
    ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    # one hiragana of each row of the syllabary, romanised (お き す つ な は ま や れ を)
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    fit=28, centre="box")

DATASETS = {d.name: d for d in (MNIST, FASHION_MNIST, KMNIST)}
DATA_DIR_HELP = ("folder with the data set's IDX files (else $FASTLENET_DATA/<dataset> (for MNIST also "
                 "$FASTLENET_DATA), else ~/.cache/fastlenet/<dataset>; downloaded there when missing)")


def named(name):
    """The Dataset called `name`, or a DataError listing the ones there are."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown data set {name!r}; data sets are: {', '.join(DATASETS)}") from None
