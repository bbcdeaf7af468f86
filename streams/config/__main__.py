"""The configuration CLI: seed, put, delete, reseal, preview. See streams/config/__init__.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.catalog import TopicCatalog
from core.settings import Settings, get_settings
from schemas import Codec, build_codec
from streams.config.apply import apply, current_state, delete, reseal
from streams.config.kinds import KINDS, SEED_SECTIONS, ConfigError, kind
from streams.config.records import as_list, load_file, normalise
from streams.content import templates

SEED_FILE = Path(__file__).resolve().parent / "seed.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifications-config", description="Write configuration to its Kafka topics."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seed = sub.add_parser("seed", help="write the seed file's records that differ")
    seed.add_argument("--file", type=Path, default=SEED_FILE)

    put = sub.add_parser("put", help="write records of one kind from a yaml/json file")
    put.add_argument("kind", choices=list(KINDS))
    put.add_argument("file", type=Path)

    remove = sub.add_parser("delete", help="tombstone keys (a null value)")
    remove.add_argument("kind", choices=list(KINDS))
    remove.add_argument("keys", nargs="+", metavar="KEY")

    sub.add_parser(
        "reseal", help="re-seal provider secrets under the current PROVIDER_SECRETS_KEY_ID"
    )

    preview = sub.add_parser("preview", help="render a template without sending")
    source = preview.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", help="template id, read from the templates topic")
    source.add_argument("--file", type=Path, help="a template record in yaml/json")
    preview.add_argument("--tenant", help="tenant id (required with --template)")
    preview.add_argument("--version", type=int, help="pin a version (default: latest published)")
    preview.add_argument("--channel", default="email")
    preview.add_argument("--locale")
    preview.add_argument("--tenant-locale", help="the tenant's default locale (default: read it)")
    preview.add_argument("--data", default="{}", help="the request data, a JSON object")
    return parser


def _seed(settings: Settings, catalog: TopicCatalog, codec: Codec, path: Path) -> list[str]:
    content = load_file(path)
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: expected sections {', '.join(SEED_SECTIONS)}")
    unknown = set(content) - set(SEED_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(SEED_SECTIONS)}"
        )
    batches = []
    for section, kind_name in SEED_SECTIONS.items():
        records = as_list(content.get(section) or [], f"{path}:{section}")
        where = [(f"{path}:{section}[{i}]", r) for i, r in enumerate(records)]
        batches.append((kind(kind_name), where))
    return apply(settings, catalog, codec, batches).lines()


def _put(
    settings: Settings, catalog: TopicCatalog, codec: Codec, kind_name: str, path: Path
) -> list[str]:
    records = as_list(load_file(path), str(path))
    where = [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    return apply(settings, catalog, codec, [(kind(kind_name), where)]).lines()


def _preview(
    settings: Settings, catalog: TopicCatalog, codec: Codec, args: argparse.Namespace
) -> tuple[templates.Preview, list[str]]:
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--data must be a JSON object")
    if args.file is not None:
        records = as_list(load_file(args.file), str(args.file))
        if len(records) != 1:
            raise ConfigError(f"{args.file}: expected one template, found {len(records)}")
        template = normalise(codec, kind("template"), records[0], str(args.file))
        tenant_id = template["tenant_id"]
    else:
        if not args.tenant:
            raise ConfigError("--tenant is required with --template")
        tenant_id = args.tenant
        index = templates.TemplateIndex()
        for key, record in current_state(settings, catalog, codec, kind("template")).items():
            index.apply(key, None, record)
        found = index.resolve(tenant_id, args.template, args.version)
        if found is None:
            raise ConfigError(_missing(index, tenant_id, args.template, args.version))
        template = found
    tenant_locale = args.tenant_locale
    if tenant_locale is None:
        tenant = current_state(settings, catalog, codec, kind("tenant")).get(tenant_id)
        tenant_locale = tenant["default_locale"] if tenant else None
    result = templates.preview(
        template,
        data,
        locale=args.locale,
        channel=args.channel,
        tenant_default_locale=tenant_locale,
    )
    return result, [result.model_dump_json(indent=2)]


def _missing(
    index: templates.TemplateIndex, tenant_id: str, template_id: str, version: int | None
) -> str:
    known = index.versions(tenant_id, template_id)
    if not known:
        return f"template {template_id!r} not found for tenant {tenant_id}"
    states = ", ".join(f"v{v} {t['state']}" for v, t in sorted(known.items()))
    wanted = f"version {version}" if version is not None else "a published version"
    return f"template {template_id!r} has no usable {wanted} (known: {states})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    catalog = TopicCatalog.load(settings)
    codec = build_codec(settings.schema_registry_url)
    try:
        if args.command == "seed":
            lines = _seed(settings, catalog, codec, args.file)
        elif args.command == "put":
            lines = _put(settings, catalog, codec, args.kind, args.file)
        elif args.command == "delete":
            count = delete(settings, catalog, kind(args.kind), args.keys)
            lines = [f"{args.kind}: {count} tombstone(s) written"]
        elif args.command == "reseal":
            lines = reseal(settings, catalog, codec)
        else:
            result, lines = _preview(settings, catalog, codec, args)
            print("\n".join(lines))
            return 1 if result.error else 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
