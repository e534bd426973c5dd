"""Helpers every stage shares: atomic files, markers and locks (:mod:`kd.core.io`), typed parsing of
config dataclasses (:mod:`kd.core.config`, over pydantic), quiet third-party imports (:mod:`kd.core.quiet`).

Plain Python, imported by every other subpackage and importing none of them.
"""
