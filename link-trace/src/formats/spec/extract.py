#!/usr/bin/env python3
"""Regenerates the vendored standard excerpts in this directory.

Inputs, fetched with the ordinary package clients:
  npm pack @elastic/ecs@9.4.0                     # ECS 9.4.0 field set (generated/ecs_flat)
  pip download --no-deps ocsf-json-schema==1.2.0  # OCSF 1.8.0 export of schema.ocsf.io

Usage:
  extract.py ELASTIC_ECS_PACKAGE_DIR OCSF_JSON_SCHEMA_PACKAGE_DIR

Only the field sets and classes link-trace writes are kept, descriptions
dropped. ECS: every field whose parent object is one link-trace writes into
(so a misspelt sibling is caught too). OCSF: the classes link-trace emits,
every object reachable from the attributes it uses, attribute types,
requirements, profiles, arrays and enum values with their captions.
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Parent objects (flat-name prefixes without the last segment) link-trace
# writes into; "" is the top level.
ECS_PARENTS = {
    "", "ecs", "event", "agent", "host", "host.os", "host.boot",
    "process", "process.thread", "process.parent", "process.user",
    "process.real_user", "process.group", "process.real_group",
    "user", "user.effective", "group", "file", "error", "container",
    "rule", "threat", "threat.technique", "threat.technique.subtechnique",
}

OCSF_CLASSES = ["base_event", "file_activity", "detection_finding", "application_error"]
OCSF_OBJECTS = [
    "metadata", "product", "extension", "actor", "process", "user", "group",
    "file", "device", "os", "container", "finding_info", "analytic", "attack",
    "technique", "sub_technique", "tactic", "related_event", "evidences",
]


def ecs(package_dir: Path) -> dict:
    flat_js = package_dir / "build" / "commonjs" / "ecs_flat.js"
    dump = subprocess.run(
        ["node", "-e", f"process.stdout.write(JSON.stringify(require({json.dumps(str(flat_js))}).EcsFlat))"],
        check=True, capture_output=True, text=True,
    ).stdout
    flat = json.loads(dump)
    version = flat_version(package_dir)
    fields = {}
    for name, spec in sorted(flat.items()):
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent not in ECS_PARENTS:
            continue
        entry = {"type": spec["type"]}
        if spec.get("required"):
            entry["required"] = True
        if "array" in spec.get("normalize", []):
            entry["array"] = True
        if spec.get("allowed_values"):
            entry["allowed_values"] = {
                v["name"]: v.get("expected_event_types", []) for v in spec["allowed_values"]
            }
        fields[name] = entry
    return {
        "standard": "Elastic Common Schema",
        "version": version,
        "source": "npm @elastic/ecs@9.4.0, build/commonjs/ecs_flat.js (generated from elastic/ecs ecs_flat.yml)",
        "license": "Apache-2.0, Copyright Elasticsearch B.V.",
        "fields": fields,
    }


def flat_version(package_dir: Path) -> str:
    text = (package_dir / "generated" / "ecs.ts").read_text()
    marker = "version: '"
    start = text.index(marker) + len(marker)
    return text[start:text.index("'", start)]


def ocsf_attribute(spec: dict) -> dict:
    entry = {"type": spec["type"], "requirement": spec.get("requirement", "optional")}
    if spec.get("is_array"):
        entry["array"] = True
    if spec.get("object_type"):
        entry["object"] = spec["object_type"]
    if spec.get("profiles"):
        entry["profiles"] = spec["profiles"]
    if spec.get("enum"):
        values = sorted(spec["enum"].items(), key=lambda kv: int(kv[0]))
        if spec.get("sibling"):
            # The sibling string attribute holds the caption: keep them.
            entry["enum"] = {k: v.get("caption", "") for k, v in values}
            entry["sibling"] = spec["sibling"]
        else:
            entry["enum"] = [int(k) for k, _ in values]
    return entry


def ocsf(package_dir: Path) -> dict:
    export = json.loads((package_dir / "ocsf_json_schema" / "ocsf" / "1.8.0.json").read_text())
    classes = {}
    for name in OCSF_CLASSES:
        spec = export["classes"][name]
        classes[name] = {
            "uid": spec["uid"],
            "category_uid": spec.get("category_uid", 0),
            "caption": spec["caption"],
            "category_name": spec.get("category_name", "Uncategorized"),
            "attributes": {k: ocsf_attribute(v) for k, v in sorted(spec["attributes"].items())},
        }
    objects = {}
    for name in OCSF_OBJECTS:
        spec = export["objects"][name]
        objects[name] = {
            "constraints": spec.get("constraints", {}),
            "attributes": {k: ocsf_attribute(v) for k, v in sorted(spec["attributes"].items())},
        }
    types = {
        name: spec.get("type", name)
        for name, spec in export["dictionary"]["types"]["attributes"].items()
    }
    return {
        "standard": "Open Cybersecurity Schema Framework",
        "version": export["version"],
        "source": "PyPI ocsf-json-schema==1.2.0, ocsf_json_schema/ocsf/1.8.0.json (schema.ocsf.io/1.8.0/export/v2/schema)",
        "license": "Apache-2.0, OCSF contributors",
        "profiles": {
            name: {"extension": spec.get("extension"), "extension_uid": spec.get("extension_id")}
            for name, spec in sorted(export["profiles"].items())
        },
        "extensions": {
            name: {"uid": spec["uid"], "version": spec["version"]}
            for name, spec in sorted(export["extensions"].items())
        },
        "types": dict(sorted(types.items())),
        "classes": classes,
        "objects": objects,
    }


def write(name: str, document: dict) -> None:
    """One line per field or attribute, so diffs between versions read well."""
    lines = ["{"]
    items = list(document.items())
    for index, (key, value) in enumerate(items):
        comma = "," if index + 1 < len(items) else ""
        if key in ("fields", "profiles", "extensions", "types"):
            lines.append(f" {json.dumps(key)}: " + block(value, 1) + comma)
        elif key in ("classes", "objects"):
            inner = []
            for n, (entry_name, spec) in enumerate(value.items()):
                head = {k: v for k, v in spec.items() if k != "attributes"}
                body = json.dumps(head)[:-1] + ', "attributes": ' + block(spec["attributes"], 3) + "}"
                inner.append(f"  {json.dumps(entry_name)}: {body}" + ("," if n + 1 < len(value) else ""))
            lines.append(f" {json.dumps(key)}: {{\n" + "\n".join(inner) + "\n }" + comma)
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    (HERE / name).write_text(text)


def block(mapping: dict, depth: int) -> str:
    pad = " " * (depth + 1)
    rows = [f"{pad}{json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items()]
    return "{\n" + ",\n".join(rows) + "\n" + " " * depth + "}"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ecs_doc = ecs(Path(sys.argv[1]))
    write(f"ecs-{ecs_doc['version']}.json", ecs_doc)
    ocsf_doc = ocsf(Path(sys.argv[2]))
    write(f"ocsf-{ocsf_doc['version']}.json", ocsf_doc)
