"""Pictures of samples: 2-D scatter plots, samples beside the data, written as PNG files."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_scatter(path: str, panels: dict, limit: float = None) -> str:
  """Saves side-by-side scatter plots of 2-D point sets, one panel per {title: (n, 2) array},
  all with the same square axes (half-width `limit`, default: from the data). Returns path."""
  arrays = [np.asarray(points) for points in panels.values()]
  if limit is None:
    limit = 1.05 * max(float(np.quantile(np.abs(a), 0.999)) for a in arrays)
  figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
  for ax, (title, points) in zip(axes[0], zip(panels, arrays)):
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.4, linewidths=0)
    ax.set(title=f'{title} (n = {len(points)})', xlim=(-limit, limit), ylim=(-limit, limit),
           aspect='equal')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
