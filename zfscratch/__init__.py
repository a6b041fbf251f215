"""zfscratch: ZFNet and its DeconvNet (Zeiler & Fergus 2014) from scratch."""
__version__ = "0.1.0"
