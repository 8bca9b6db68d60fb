"""Pictures of samples, written as PNG files: 2-D scatter plots (samples beside the data) and
image grids. Figures are drawn on their own Agg canvas, without pyplot, so importing this module
leaves the matplotlib backend of a notebook or script alone."""
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


def save_scatter(path: str, panels: dict, limit: float = None) -> str:
  """Saves side-by-side scatter plots of 2-D point sets, one panel per {title: (n, 2) array},
  all with the same square axes (half-width `limit`, default: from the data). Returns path."""
  arrays = [np.asarray(points) for points in panels.values()]
  if limit is None:
    limit = 1.05 * max(float(np.quantile(np.abs(a), 0.999)) for a in arrays)
  figure = Figure(figsize=(4.5 * len(panels), 4.5))
  FigureCanvasAgg(figure)
  axes = figure.subplots(1, len(panels), squeeze=False)
  for ax, (title, points) in zip(axes[0], zip(panels, arrays)):
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, linewidths=0)
    ax.set(title=f'{title} (n = {len(points)})', xlim=(-limit, limit), ylim=(-limit, limit),
           aspect='equal')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  return path


def save_image(path: str, image: np.ndarray) -> str:
  """Saves one image (H, W, C) with values in [0, 1], C = 1 or 3, as an 8-bit PNG. Returns path."""
  return save_image_grid(path, np.asarray(image)[None], columns=1, gap=0)


def save_image_grid(path: str, images: np.ndarray, columns: int = None, gap: int = 2) -> str:
  """Saves images (n, H, W, C) with values in [0, 1], C = 1 or 3, as one PNG grid with a white
  gap of `gap` pixels, `columns` wide (default: about square). Returns path."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  n, height, width, channels = images.shape
  if channels not in (1, 3):
    raise ValueError(f'Images need 1 or 3 channels to be saved as PNG; got {channels}.')
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  grid = np.ones((rows * (height + gap) + gap, columns * (width + gap) + gap, channels),
                 np.float32)
  for k, image in enumerate(images):
    top = gap + (k // columns) * (height + gap)
    left = gap + (k % columns) * (width + gap)
    grid[top:top + height, left:left + width] = image
  pixels = np.round(grid * 255).astype(np.uint8)
  Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(path)
  return path
