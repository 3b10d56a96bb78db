"""Writes the JPEG fixtures of ImageImportTests (run once; the files are committed).

Each JPEG holds a smooth pattern that the test recomputes (so it can check what a decoder
returns against what was encoded), and beside it PIL's decoding of the file
(`NAME.pil.txt`: height, width, channels, then the values in row-major HWC order), an
independent decoder's answer to compare with ours.

    /work/venv/bin/python make_jpeg_fixtures.py
"""
from PIL import Image


def pattern(x, y, c):
    # The same formula as ImageImportTests.jpegPattern.
    return 20 + 8 * x + 6 * y + 40 * c


def write(name, mode, width, height, **options):
    channels = 1 if mode == "L" else 3
    image = Image.new(mode, (width, height))
    image.putdata([pattern(x, y, 0) if channels == 1 else tuple(pattern(x, y, c) for c in range(3))
                   for y in range(height) for x in range(width)])
    image.save(name + ".jpg", quality=95, **options)
    decoded = Image.open(name + ".jpg")
    decoded.load()
    values = list(decoded.tobytes())
    with open(name + ".pil.txt", "w") as out:
        out.write(f"{height} {width} {channels}\n" + " ".join(map(str, values)) + "\n")


write("rgb-12x10", "RGB", 12, 10, subsampling=0)
write("grey-8x6", "L", 8, 6)
write("rgb-progressive-12x10", "RGB", 12, 10, subsampling=0, progressive=True)
