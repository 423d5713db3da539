"""The package's version, in one place: pyproject.toml reads it from here (setuptools' dynamic version), and
``nnunet_hpn.__version__``, ``nnunet-hpn --version`` and the DICOM-SEG files the plugin exports use it."""

__version__ = "0.1.0"
