"""`medray data import|list|describe`."""

from __future__ import annotations

import argparse
from typing import Any

from medray.cli.common import add_common, csv_list, emit, unit_map


def data_import(args: argparse.Namespace) -> None:
    from medray.api import import_dataset

    manifest = import_dataset(
        args.kind, args.source, args.name, storage=args.storage, dataset=args.dataset, target=args.target,
        columns=args.columns, missing=args.missing, categorical=args.categorical or [], group=args.group,
        drop=args.drop or [], classes=args.classes, sep=args.sep, units=args.units, grayscale=not args.rgb, license=args.license,
        source_label=args.source_label, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        seed=args.seed, image_size=args.size, outcomes=args.outcomes, labels=args.labels,
        patient_column=args.patient_column, time_column=args.time_column, variable_column=args.variable_column,
        value_column=args.value_column, time_unit=args.time_unit, static=args.static or [], scores=args.scores or [],
        window_hours=args.window_hours, out_of_range=args.out_of_range, text_column=args.text_column,
        label_column=args.label_column, label_names=args.label_names, path_column=args.path_column,
        group_column=args.group_column, channels=args.channels, resize=args.resize,
        skip_unreadable=args.skip_unreadable,
    )
    emit(args, manifest, lambda: f"imported {manifest['name']} v{manifest['version']}\n" + describe_text(manifest))


def describe_text(manifest: dict[str, Any]) -> str:
    from medray.train.data.dataset import describe_source

    splits = manifest["splits"]
    quality = manifest["quality"]
    lines = [
        f"{manifest['name']} v{manifest['version']}  ({manifest['modality']}, {len(manifest['classes'])} classes)",
        f"  classes:  {', '.join(manifest['classes'])}",
        "  splits:   " + "  ".join(f"{name} {splits[name]['rows']}" for name in ("train", "val", "test")),
    ]
    schema = manifest["schema"]
    if "features" in schema:
        lines.append(f"  features: {len(schema['features'])} ({', '.join(f['name'] for f in schema['features'][:8])}"
                     + (", …)" if len(schema["features"]) > 8 else ")"))
    elif "variables" in schema:
        lines += _time_series_lines(schema, quality)
    elif "length_words" in quality:
        words, chars = quality["length_words"], quality["length_characters"]
        lines.append(f"  documents: median {words['median']:.0f} words ({chars['median']:.0f} characters), "
                     f"p95 {words['p95']:.0f} words; empty dropped {quality['empty_documents_dropped']}, "
                     f"duplicates within splits {sum(quality['duplicate_documents_within_splits'].values())}")
    else:
        lines.append(f"  {schema['column']}:    shape {schema['shape']} {schema['dtype']}"
                     + (f", squared by {schema['resize']}" if schema.get("resize") else "")
                     + ("; patients kept to one split" if quality.get("patient_groups") else "")
                     + (f"; {quality['unreadable_skipped']} unreadable file(s) skipped"
                        if quality.get("unreadable_skipped") else ""))
    for name in ("train", "val", "test"):
        counts = ", ".join(f"{cls} {n}" for cls, n in splits[name]["class_counts"].items())
        lines.append(f"  {name:<5} by class: {counts}")
    duplicates = quality["duplicates_across_splits"]
    lines += [
        f"  missing values: {quality['missing_values_total']}"
        + (f" ({', '.join(f'{k} {v}' for k, v in quality['missing_values'].items() if v)})"
           if quality["missing_values_total"] else ""),
        f"  duplicates across splits: {sum(duplicates.values())} ({', '.join(f'{k} {v}' for k, v in duplicates.items())})",
        f"  constant features: {quality['constant_features']}",
        f"  source:  {describe_source(manifest['source'])}",
        f"  license: {manifest['license']}",
        f"  created: {manifest['created_at']}",
    ]
    return "\n".join(lines)


def _time_series_lines(schema: dict[str, Any], quality: dict[str, Any]) -> list[str]:
    names = [v["name"] for v in schema["variables"]]
    statics = [s["name"] + (" (categorical)" if s.get("categories") else "") for s in schema["statics"]]
    lines = [
        f"  variables: {len(names)} time-varying ({', '.join(names[:8])}" + (", …)" if len(names) > 8 else ")")
        + f", over {schema['window_minutes'] / 60:g} h from admission",
        f"  statics:  {', '.join(statics) or 'none'}",
    ]
    if schema.get("reference_scores"):
        scores = ", ".join(s["name"] for s in schema["reference_scores"])
        lines.append(f"  reference scores: {scores} (not model inputs)")
    if "observations" in quality:
        per_patient = quality["observations"] / max(quality.get("patients", 0), 1)
        dropped = ", ".join(f"{reason.replace('_', ' ')} {n}" for reason, n in quality.get("dropped", {}).items())
        lines.append(f"  observations: {quality['observations']} kept ({per_patient:.0f} per patient)"
                     + (f"; dropped: {dropped}" if dropped else ""))
    return lines


def data_list(args: argparse.Namespace) -> None:
    from medray.api import datasets

    listing = datasets(args.storage)
    rows = listing["datasets"]

    def human() -> str:
        if not rows:
            return f"no datasets in {listing['storage']}"
        header = f"{'name':<20} {'latest':>6} {'versions':>8}  {'modality':<10} {'train/val/test':<16} classes"
        body = [
            f"{r['name']:<20} {'v' + str(r['latest']):>6} {len(r['versions']):>8}  {r['modality']:<10} "
            f"{'/'.join(str(r['rows'][s]) for s in ('train', 'val', 'test')):<16} {', '.join(r['classes'])}"
            for r in rows
        ]
        return "\n".join([f"datasets in {listing['storage']}", header, *body])

    emit(args, listing, human)


def data_describe(args: argparse.Namespace) -> None:
    from medray.api import describe_dataset

    manifest = describe_dataset(args.ref, args.storage)
    emit(args, manifest, lambda: describe_text(manifest))


def add_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="import, list and describe datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    imp = data_commands.add_parser(
        "import", help="import a source into a new dataset version",
        description="Import a source (file, folder, s3:// object, URL or dataset name) as a new, validated "
                    "dataset version.",
    )
    imp.add_argument("kind", choices=["medmnist", "ucr", "csv", "sklearn", "images", "physionet2012", "events",
                                      "text"])
    imp.add_argument("source", help="path, s3:// or https:// URL, or a dataset name (MedMNIST flag, UCR "
                                    "dataset, scikit-learn dataset)")
    imp.add_argument("--name", required=True, help="dataset name on storage")
    imp.add_argument("--dataset", help="which dataset inside a multi-dataset source (UCR folder)")
    imp.add_argument("--target", help="csv, events: the label column (events: of the --labels table)")
    imp.add_argument("--columns", type=csv_list, help="csv: column names for a file without a header row")
    imp.add_argument("--missing", type=csv_list, help="csv: cell texts meaning missing (default: '',?,NA,NaN)")
    imp.add_argument("--categorical", type=csv_list, help="csv: categorical columns")
    imp.add_argument("--group", help="csv, text: rows sharing this column (e.g. patient id) stay in one split; "
                                     "images: 'folder' (one folder per patient) or 'dicom:PatientID'")
    imp.add_argument("--text-column", default="text", help="text: the document column of the table")
    imp.add_argument("--label-column", default="label", help="text, images: the label column of the table")
    imp.add_argument("--path-column", default="path",
                     help="images: the --labels CSV's column of file paths, relative to the source")
    imp.add_argument("--group-column", help="images: the --labels CSV's patient column (hashed, never stored)")
    imp.add_argument("--label-names", help="text: a CSV mapping each label value to its class name")
    imp.add_argument("--drop", type=csv_list, help="csv: columns to leave out (identifiers, free text)")
    imp.add_argument("--classes", type=csv_list, help="class names in label order; other labels are refused")
    imp.add_argument("--sep", default=",", help="csv: field separator")
    imp.add_argument("--units", type=unit_map, metavar="COLUMN=UNIT,...",
                     help="csv: each feature's unit or coding (e.g. 'trestbps=mm Hg,chol=mg/dl'), shown beside the "
                          "field on the web page's form")
    imp.add_argument("--size", type=int, help="images: side length to resize to (default 64); medmnist: the "
                     "published size to download, 28 (default), 64, 128 or 224")
    imp.add_argument("--rgb", action="store_true", help="images: keep colour (default: greyscale)")
    imp.add_argument("--channels", type=int, choices=[1, 3], help="images: 1 (greyscale, default) or 3 (RGB)")
    imp.add_argument("--resize", default="pad", choices=["pad", "crop", "stretch"],
                     help="images: a picture that is not square is padded (default), centre-cropped or stretched")
    imp.add_argument("--skip-unreadable", action="store_true",
                     help="images: leave out files that cannot be decoded (counted in the manifest) instead "
                          "of stopping")
    imp.add_argument("--outcomes", help="physionet2012: the outcomes file (Outcomes-a.txt)")
    imp.add_argument("--labels", help="events: the labels table (CSV or Parquet), one row per patient; "
                                      "images: a CSV of each file's path, label (and patient)")
    imp.add_argument("--patient-column", default="patient", help="events: the patient column of both tables")
    imp.add_argument("--time-column", default="time", help="events: the time column (number or HH:MM)")
    imp.add_argument("--variable-column", default="variable", help="events: the variable-name column")
    imp.add_argument("--value-column", default="value", help="events: the value column")
    imp.add_argument("--time-unit", default="minutes", choices=["minutes", "hours"],
                     help="events: the unit of a numeric time since admission (default minutes)")
    imp.add_argument("--static", type=csv_list, help="events: labels-table columns kept as static descriptors")
    imp.add_argument("--scores", type=csv_list,
                     help="events: labels-table columns kept as reference scores (higher = worse; not model inputs)")
    imp.add_argument("--window-hours", type=float, default=48.0,
                     help="physionet2012, events: observations later than this after admission are dropped "
                          "(default 48)")
    imp.add_argument("--out-of-range", default="drop", choices=["drop", "refuse"],
                     help="physionet2012, events: physiologically impossible values are dropped and counted "
                          "(default) or refuse the import")
    imp.add_argument("--val-fraction", type=float, help="share carved for validation (default 0.15)")
    imp.add_argument("--test-fraction", type=float, help="share held out for test when the source has none")
    imp.add_argument("--seed", type=int, help="split seed (default 0)")
    imp.add_argument("--license", help="license or terms of the source, recorded in the manifest")
    imp.add_argument("--source-label", help="your name for the source, recorded in the manifest instead of its "
                                            "path or file name (which are never stored)")
    add_common(imp)
    imp.set_defaults(handler=data_import)

    lst = data_commands.add_parser("list", help="datasets and their versions")
    add_common(lst)
    lst.set_defaults(handler=data_list)

    desc = data_commands.add_parser("describe", help="a dataset version's manifest")
    desc.add_argument("ref", metavar="NAME[@vN]")
    add_common(desc)
    desc.set_defaults(handler=data_describe)
