"""A stand-in for torchvision, enough to import open_clip and timm and run model forwards.

The venv's torchvision 0.28 does not match torch 2.13 (`operator torchvision::nms does not
exist`), and open_clip/timm import torchvision at load only for image transforms, datasets and
FrozenBatchNorm2d, none of which a ViT forward uses. Put the folder that holds this package
first on sys.path (the cross-check scripts do) and every `torchvision.*` import resolves to an
empty module whose attributes are inert placeholder classes.
"""
import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (InterpolationMode.BICUBIC...)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {cls.__name__} is not available")


def _module_getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Placeholder(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
__version__ = "0.0-stand-in"
__path__ = globals().get("__path__", [])
__getattr__ = _module_getattr
