from setuptools import find_packages, setup

setup(
    name='score_sde',
    version='0.1.0',
    description='Score-based generative modeling through SDEs, in JAX.',
    packages=find_packages(include=['score_sde', 'score_sde.*', 'configs', 'configs.*']),
    python_requires='>=3.11',
    install_requires=[
        'jax',
        'flax',
        'optax',
        'orbax-checkpoint',
        'diffrax',
        'ml-collections',
        'absl-py',
        'grain',
        'tensorflow-datasets',
        'tensorboardX',
        'tqdm',
        'pillow',
        'scikit-learn',
        'matplotlib',
        'numpy',
    ],
    extras_require={'test': ['pytest', 'pytest-xdist', 'scipy',
                             'nbclient', 'nbformat', 'ipykernel']},
    entry_points={'console_scripts': ['score-sde=score_sde.main:run']},
)
