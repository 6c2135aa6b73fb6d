from setuptools import find_packages, setup

setup(
    name='jaxtl',
    version='0.1.0',
    description='Transfer learning, knowledge distillation and Noisy Student self-training in JAX/Flax NNX.',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['jaxtl', 'jaxtl.*']),
    python_requires='>=3.11',
    install_requires=[
        'jax>=0.8',
        'flax>=0.12',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'tensorflow-datasets>=4.9.9',
        'array-record>=0.8',
        'grain>=0.2.12',
        'ml-collections>=1.0',
        'absl-py>=2.0',
        'importlib-resources>=6.0',  # Imported lazily by TFDS builders.
        'scikit-learn>=1.3',        # The bundled digits dataset.
        'numpy>=1.26',
        'tqdm>=4.66',
        'tensorboardX>=2.6',        # TensorBoard event files without TensorFlow.
        'safetensors>=0.4',
        'matplotlib>=3.8',
        'pillow>=10.0',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3', 'scikit-image>=0.22'],
        'torch': ['torch>=2.4'],
    },
)
