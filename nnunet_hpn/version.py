"""The package's version (the one of pyproject.toml): read by ``nnunet_hpn.__version__`` and written into the
DICOM-SEG files the plugin exports."""

__version__ = "0.1.0"
