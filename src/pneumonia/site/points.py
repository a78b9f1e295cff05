"""Where a site's operating points live: `<paths.models>/sites/<site>/v<n>.json`, beside the
model, one file per calibration. A re-calibration adds the next version and never overwrites
one (the file is created exclusively); `--site NAME` uses the newest, `NAME@v<n>` a given one.
Each names the model file (sha256) it was chosen for, and is refused for any other.

The served version registered for a point (one per site, `site-<name>`) is recorded after the
point is stored, in `v<n>.serving.json` beside it (also created exclusively): the version number
is the stored point's, whatever else calibrates at the same time."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pneumonia.contracts.files import partial_path
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    OperatingPointError,
    read_operating_point,
)

SITES_FOLDER = "sites"
# No '.': a site's name is also its registry alias (`site-<name>`), which holds none.
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_VERSION_FILE = re.compile(r"v(?P<version>[1-9][0-9]*)\.json")
SERVING_SUFFIX = ".serving.json"
_REFERENCE = re.compile(r"(?P<site>[^@]+)(?:@v(?P<version>[1-9][0-9]*))?")


def sites_folder(models: Path) -> Path:
    return models / SITES_FOLDER


def check_site_name(name: str) -> str:
    if not SITE_NAME.fullmatch(name):
        raise OperatingPointError(
            f"site name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit (it names a folder and a registry alias)"
        )
    return name


def site_versions(models: Path, site: str) -> list[int]:
    folder = sites_folder(models) / check_site_name(site)
    if not folder.is_dir():
        return []
    found = (_VERSION_FILE.fullmatch(entry.name) for entry in folder.iterdir())
    return sorted(int(match["version"]) for match in found if match)


def store_site_point(models: Path, point: OperatingPoint) -> tuple[OperatingPoint, Path]:
    """The point as the site's next version; returns it (with its version) and its file."""
    if point.site is None:
        raise OperatingPointError("not a site operating point (no site name)")
    folder = sites_folder(models) / check_site_name(point.site)
    folder.mkdir(parents=True, exist_ok=True)
    version = max(site_versions(models, point.site), default=0) + 1
    while True:
        numbered = point.model_copy(update={"version": version})
        target = folder / f"v{version}.json"
        partial = partial_path(target)
        partial.write_text(json.dumps(numbered.as_json(), indent=2, sort_keys=True) + "\n")
        try:
            # A hard link fails if the version exists: two calibrations at once get two numbers.
            os.link(partial, target)
        except FileExistsError:
            version += 1
            continue
        except OSError as error:
            raise OperatingPointError(
                f"{target}: cannot store the site point ({error.strerror or error}); the models "
                "folder must be on a writable filesystem with hard links"
            ) from error
        finally:
            partial.unlink(missing_ok=True)
        return numbered, target


def serving_path(point_path: Path) -> Path:
    return point_path.with_name(point_path.name.removesuffix(".json") + SERVING_SUFFIX)


def store_serving(point_path: Path, serving_model: dict) -> Path:
    """Record the served version registered for the stored point at `point_path`; refused if
    one is recorded already (never overwritten)."""
    path = serving_path(point_path)
    try:
        with path.open("x") as handle:
            handle.write(json.dumps(serving_model, indent=2, sort_keys=True) + "\n")
    except FileExistsError as error:
        raise OperatingPointError(f"{path}: a served version is recorded already") from error
    return path


def parse_site_reference(text: str) -> tuple[str, int | None]:
    """`NAME` (the newest version) or `NAME@v<n>`."""
    match = _REFERENCE.fullmatch(text)
    if not match:
        raise OperatingPointError(f"--site {text!r}: expected NAME or NAME@v<n>")
    version = match["version"]
    return check_site_name(match["site"]), int(version) if version else None


def read_site_point(models: Path, text: str) -> tuple[OperatingPoint, Path]:
    """The site point `NAME` or `NAME@v<n>` names, and its file."""
    site, version = parse_site_reference(text)
    versions = site_versions(models, site)
    if not versions:
        known = list_sites(models)
        raise OperatingPointError(
            f"no operating point for site {site!r} in {sites_folder(models)} (known: "
            f"{', '.join(known) or 'none'}); run pneumonia site calibrate FOLDER --name {site}"
        )
    if version is not None and version not in versions:
        raise OperatingPointError(
            f"site {site!r} has versions {', '.join(f'v{v}' for v in versions)}, not v{version}"
        )
    number = version or versions[-1]
    path = sites_folder(models) / site / f"v{number}.json"
    point = read_operating_point(path)
    if point.site != site or point.calibration is None or point.version != number:
        raise OperatingPointError(
            f"{path}: not version {number} of site {site!r}'s operating point (it says site "
            f"{point.site!r}, version {point.version}); restore it, or calibrate again"
        )
    served = serving_path(path)
    if served.is_file() and point.serving_model is None:
        try:
            recorded = json.loads(served.read_text())
        except (OSError, ValueError) as error:
            raise OperatingPointError(f"{served}: not readable JSON ({error})") from error
        if not isinstance(recorded, dict):
            raise OperatingPointError(f"{served}: not a JSON object")
        point = point.model_copy(update={"serving_model": recorded})
    return point, path


def list_sites(models: Path) -> list[str]:
    folder = sites_folder(models)
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and SITE_NAME.fullmatch(entry.name) and site_versions(models, entry.name)
    )


def all_site_points(
    models: Path, problems: list[str] | None = None
) -> list[tuple[OperatingPoint, Path]]:
    """Every stored site point, by site then version; one that cannot be read is left out and
    its reason added to `problems` (when given; else it is raised)."""
    found = []
    for site in list_sites(models):
        for version in site_versions(models, site):
            try:
                found.append(read_site_point(models, f"{site}@v{version}"))
            except OperatingPointError as error:
                if problems is None:
                    raise
                problems.append(str(error))
    return found
