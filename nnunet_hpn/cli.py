"""``nnunet-hpn``: what nnU-Net lacks for multi-phase HPN work (phantoms, conversion, registration, raw-to-label
prediction, CPU configuration, union, evaluation, report, demo). Training and model prediction use the stock
``nnUNetv2_*`` commands."""
import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from nnunet_hpn.cli_options import (DEFAULT_TRAINER, add_dataset, add_djfile, add_folds, add_option, add_phases,
                                    add_plans, add_processes, add_registration_method, add_seed, add_tolerance,
                                    add_unusual_intensities, margin_mm, positive_int, real, whole)
from nnunet_hpn.errors import HPNInputError, HPNWarning
from nnunet_hpn.phases import PHASES, PREFERRED_REFERENCE

#: What ``add_subparsers`` returns: the subcommands are added to it.
Subparsers = argparse._SubParsersAction


def _phantom(args: argparse.Namespace) -> None:
    from nnunet_hpn.phantom import write_phantom_cases
    from nnunet_hpn.phantom_liver import write_liver_cases

    from nnunet_hpn.io.publish import check_outputs, published_folder, replace_mode

    write = write_liver_cases if args.preset == "liver" else write_phantom_cases
    out_dir = Path(args.out_dir)
    check_outputs([(out_dir, "OUT_DIR", "folder")])
    # the whole set at once: an earlier set (phantoms.json) is replaced, never mixed with the new cases
    with published_folder(out_dir, replace_mode(out_dir, "phantoms.json", "OUT_DIR")) as staging:
        cases = write(staging, args.cases, seed=args.seed, phases=args.phases, crop_margin_mm=args.crop)
    cropped = f", cropped to the label box + {args.crop:g} mm" if args.crop is not None else ""
    labels = f"; labels for convert --labels: {Path(args.out_dir) / 'labels.json'}" if args.preset == "liver" else ""
    print(f"wrote {len(cases)} {args.preset} phantom cases ({', '.join(args.phases)}{cropped}) to "
          f"{args.out_dir}{labels}")


def _convert(args: argparse.Namespace) -> None:
    from nnunet_hpn.pipeline.convert import convert_cases

    raw_root = Path(args.raw_root) if args.raw_root else None
    target = convert_cases(Path(args.in_dir), args.dataset_id, args.name, raw_root=raw_root, overwrite=args.overwrite,
                           phases=tuple(args.phases), reference_phase=args.reference_phase, register=args.register,
                           crop_margin_mm=args.crop_to_label, allow_unusual_intensities=args.allow_unusual_intensities,
                           n_processes=args.np if args.np is not None else _default_processes(args.register),
                           registration_method=args.registration_method,
                           labels=Path(args.labels) if args.labels else None,
                           phase_map=Path(args.phase_map) if args.phase_map else None,
                           segment_map=_segment_map(args.segment_map))
    print(f"wrote {target}")


def _segment_map(items: List[str]) -> dict:
    """``--segment-map SEGMENT=LABEL ...`` as a dict; HPNInputError for an item without '='."""
    mapping = {}
    for item in items:
        segment, _, label = item.partition("=")
        if not segment.strip() or not label.strip():
            raise HPNInputError(f"--segment-map {item}: expected SEGMENT_LABEL=LABEL_NAME (or =0 to leave it out)")
        mapping[segment.strip()] = label.strip()
    return mapping


def _phase_map(args: argparse.Namespace) -> None:
    from nnunet_hpn.io.dicom_study import review_phase_map
    from nnunet_hpn.io.listing import case_folders
    from nnunet_hpn.io.publish import check_output_not_input, write_text_atomically

    check_output_not_input(Path(args.output), [Path(args.in_dir)] + ([Path(args.phase_map)] if args.phase_map
                                                                      else []), "-o")
    text, errors = review_phase_map(case_folders(Path(args.in_dir)), args.phases,
                                    Path(args.phase_map) if args.phase_map else None)
    write_text_atomically(Path(args.output), text)
    print(f"wrote {args.output}")
    if errors:
        raise HPNInputError("\n".join(errors + [f"{len(errors)} case(s) need a decision: fill in their phases in "
                                                f"{args.output} and pass it back with --phase-map"]))


def _default_processes(register: bool) -> int:
    """convert's ``-np`` default: nnU-Net's (``nnUNet_def_n_proc``) for registration, which is CPU-bound; 1 for plain
    copies."""
    from nnunetv2.configuration import default_num_processes

    return default_num_processes if register else 1


def _uncrop(args: argparse.Namespace) -> None:
    from nnunet_hpn.pipeline.crop import uncrop_folder

    cases = uncrop_folder(Path(args.pred_dir), Path(args.boxes), Path(args.reference), Path(args.output))
    print(f"wrote {len(cases)} full-size label maps to {args.output}")


def _register(args: argparse.Namespace) -> None:
    from nnunet_hpn.pipeline.registration import register_files

    result = register_files(Path(args.fixed), Path(args.moving), Path(args.output),
                            moving_label_path=Path(args.moving_label) if args.moving_label else None,
                            fixed_label_path=Path(args.fixed_label) if args.fixed_label else None,
                            method=args.registration_method, allow_unusual_intensities=args.allow_unusual_intensities)
    similarity = result.qc["similarity"]
    print(f"NMI {similarity['before']['nmi']} -> {similarity['after']['nmi']} ({args.registration_method}, "
          f"{result.qc['seconds']:.1f} s)")
    if "pancreas" in result.qc:
        before, after = result.qc["pancreas"]["before"], result.qc["pancreas"]["after"]
        print(f"pancreas mean surface distance {before['mean_surface_distance_mm']} -> "
              f"{after['mean_surface_distance_mm']} mm, Dice {before['dice']} -> {after['dice']}")
    print(f"wrote {args.output}")


def _model_folder(args: argparse.Namespace) -> Path:
    """``-m MODEL_DIR``, or the folder nnU-Net's ``-d -c -tr -p`` name under ``$nnUNet_results``."""
    if args.model and args.dataset:
        raise HPNInputError(f"{args.model}: give either -m MODEL_DIR or -d DATASET -c CONFIGURATION, not both")
    if args.model:
        return Path(args.model)
    if not args.dataset or not args.configuration:
        raise HPNInputError(f"{args.output}: no model; give -m MODEL_DIR or -d DATASET -c CONFIGURATION "
                            "[-tr TRAINER] [-p PLANS]")
    import os

    from nnunet_hpn.nnunet.dataset_names import dataset_name

    name = dataset_name(args.dataset)
    if not os.environ.get("nnUNet_results"):
        raise HPNInputError(f"-d {args.dataset}: nnUNet_results: environment variable not set")
    model = Path(os.environ["nnUNet_results"]) / name / f"{args.trainer}__{args.plans}__{args.configuration}"
    if not model.is_dir():
        trained = sorted(path.name for path in model.parent.glob("*__*__*") if path.is_dir())
        raise HPNInputError(f"{model}: no such model folder (trained in {model.parent}: "
                            f"{', '.join(trained) if trained else 'none'})")
    return model


def _locator_dataset(args: argparse.Namespace) -> None:
    import os

    from nnunet_hpn.nnunet.dataset_names import dataset_name
    from nnunet_hpn.pipeline.locator import write_locator_dataset

    if not os.environ.get("nnUNet_raw"):
        raise HPNInputError("nnUNet_raw: environment variable not set")
    source = Path(os.environ["nnUNet_raw"]) / dataset_name(args.dataset)
    target = write_locator_dataset(source, args.target_id, all_phases=args.all_phases, target=args.target)
    print(f"wrote {target}")


def _predict_device(requested: Optional[str]) -> str:
    """``-device`` as given, else as nnUNetv2_predict: cuda where a CUDA device is available, otherwise the CPU (said
    in one line)."""
    if requested is not None:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    print("no CUDA device: predicting on the CPU (-device cpu)")
    return "cpu"


def _predict(args: argparse.Namespace) -> None:
    from nnunet_hpn.pipeline.predict import TwoStage, predict_case, predict_folder

    phases = {name: getattr(args, name) for name in PHASES if getattr(args, name)}
    for item in args.phase:
        name, _, path = item.partition("=")
        if not name or not path:
            raise HPNInputError(f"--phase {item}: expected NAME=PATH")
        if name in phases:
            raise HPNInputError(f"{path}: phase {name} given twice (also as {phases[name]}); give each phase once")
        phases[name] = path
    options = dict(folds=args.folds, device=args.device, disable_tta=args.disable_tta,
                   checkpoint=args.checkpoint,
                   registration=args.registration_method, allow_unusual_intensities=args.allow_unusual_intensities,
                   step_size=args.step_size, save_probabilities=args.save_probabilities,
                   output_format=args.output_format,
                   two_stage=TwoStage(Path(args.locator) if args.locator else None, tuple(args.locator_folds),
                                      *(() if args.locator_margin is None else (args.locator_margin,)),
                                      strict=args.strict))
    if (args.strict or args.locator_margin is not None or args.locator_folds != ["0"]) and not args.locator:
        raise HPNInputError(f"{args.output}: --strict, --locator-folds and --locator-margin need --locator MODEL_DIR")
    if args.qc and args.input:
        raise HPNInputError(f"{args.qc}: --qc is for one case; folder mode writes the QC of every case to "
                            f"{Path(args.output) / 'registration_qc'}")
    if args.input and phases:
        raise HPNInputError(f"{args.input}: give either -i IN_DIR or the phases of one case, not both")
    if not args.input and not phases:
        raise HPNInputError(f"{args.output}: no input; give {'/'.join(f'--{phase}' for phase in PHASES)}/--phase "
                            "NAME=PATH or -i IN_DIR")
    folder_only = [flag for flag, given in (("--continue_prediction", args.continue_prediction),
                                            ("-npp", args.npp != 1), ("-nps", args.nps != 1),
                                            ("-num_parts", args.num_parts != 1), ("-part_id", args.part_id != 0))
                   if given]
    if args.phase_map and not args.input:
        folder_only.append("--phase-map")
    if folder_only and not args.input:
        raise HPNInputError(f"{args.output}: {folder_only[0]} needs folder mode (-i IN_DIR)")
    model = _model_folder(args)
    options["model_named_by"] = ("-m" if args.model else
                                 f"-d {args.dataset} -c {args.configuration} -tr {args.trainer} -p {args.plans}")
    options["device"] = _predict_device(args.device)  # after the checks of the arguments: no line before an error
    if args.input:
        cases = predict_folder(Path(args.input), Path(args.output), model, n_processes_preprocessing=args.npp,
                               n_processes_export=args.nps, continue_prediction=args.continue_prediction,
                               num_parts=args.num_parts, part_id=args.part_id,
                               phase_map=Path(args.phase_map) if args.phase_map else None, **options)
    else:
        predict_case({name: Path(path) for name, path in phases.items()}, model, Path(args.output),
                     qc_path=Path(args.qc) if args.qc else None, **options)
    print(f"wrote {len(cases)} label maps to {args.output}" if args.input else f"wrote {args.output}")


def _cpu_config(args: argparse.Namespace) -> None:
    import os

    from nnunet_hpn.nnunet.dataset_names import dataset_name
    from nnunet_hpn.nnunet.plans_tools import add_small_configuration

    if not os.environ.get("nnUNet_preprocessed"):
        raise HPNInputError("nnUNet_preprocessed: environment variable not set")
    plans_file = Path(os.environ["nnUNet_preprocessed"]) / dataset_name(args.dataset) / f"{args.plans}.json"
    entry = add_small_configuration(plans_file, args.name, args.patch_size, args.base_features, args.max_features,
                                    args.batch_size, spacing_factor=args.spacing_factor, overwrite=args.overwrite)
    if entry["patch_size"] != list(args.patch_size):
        print(f"note: patch size {' '.join(map(str, args.patch_size))} rounded to "
              f"{' '.join(map(str, entry['patch_size']))} (each edge a multiple of the network's total stride)")
    print(f"added configuration '{args.name}' to {plans_file}: spacing {entry['spacing']}, patch "
          f"{entry['patch_size']}, features {entry['architecture']['arch_kwargs']['features_per_stage']}, batch "
          f"{entry['batch_size']}")
    if args.spacing_factor != 1.0:
        print(f"its data is its own: nnUNetv2_preprocess -d {args.dataset} -c {args.name} -plans_name {args.plans}")


def _label_scheme(args: argparse.Namespace):
    """The label scheme of ``-djfile`` (None when not given: each command looks beside its inputs, then takes the
    paper's; :func:`nnunet_hpn.labels.resolve_scheme`)."""
    from nnunet_hpn.labels import LabelScheme

    return LabelScheme.read(Path(args.djfile)) if args.djfile else None


def _union(args: argparse.Namespace) -> None:
    from nnunet_hpn.pipeline.union import union_folders

    cases = union_folders([Path(d) for d in args.input], Path(args.output), scheme=_label_scheme(args))
    print(f"wrote the union of {len(args.input)} predictions for {len(cases)} cases to {args.output}")


def _split(args: argparse.Namespace) -> None:
    from nnunet_hpn.nnunet.splits import resolve_preprocessed_dir, write_crossval_splits

    folder = resolve_preprocessed_dir(args.dataset)
    splits = write_crossval_splits(folder, n_folds=args.n_folds, seed=args.seed, overwrite=args.overwrite,
                                   scheme=_label_scheme(args))
    sizes = ", ".join(f"fold {i}: {len(s['train'])} train / {len(s['val'])} val" for i, s in enumerate(splits))
    print(f"wrote {folder / 'splits_final.json'} ({sizes})")


def _evaluate(args: argparse.Namespace) -> None:
    from nnunet_hpn.evaluate.metrics import check_folder_order, evaluate_folders, format_dice_table, write_summary
    from nnunet_hpn.io.listing import predicted_cases

    if Path(args.gt_dir).resolve() == Path(args.pred_dir).resolve():
        raise HPNInputError(f"{args.pred_dir}: PRED_DIR is GT_DIR ({args.gt_dir}); the truth compared with itself")
    check_folder_order(Path(args.gt_dir), Path(args.pred_dir))
    if args.output:
        from nnunet_hpn.io.publish import check_outputs

        # the truth folder as a whole; of the prediction folder (where nnU-Net puts its summary.json) the images
        images = [path for folder in (Path(args.gt_dir), Path(args.pred_dir)) if folder.is_dir()
                  for path in folder.iterdir() if not path.name.endswith((".json", ".csv"))]
        output = Path(args.output)
        check_outputs([(output, "-o", "file"), (output.with_suffix(".csv"), "-o (its per-case .csv)", "file")],
                      [*images, Path(args.gt_dir)])
    cases = predicted_cases(Path(args.pred_dir)) if args.only_predicted else None
    result = evaluate_folders(Path(args.pred_dir), Path(args.gt_dir), cases=cases, tolerance_mm=args.tolerance_mm,
                              progress=None, n_processes=args.np, scheme=_label_scheme(args))
    print(format_dice_table(result))
    if args.output:
        write_summary(result, Path(args.output))
        print(f"wrote {args.output}")


def _report(args: argparse.Namespace) -> None:
    from nnunet_hpn.evaluate.report import build_report, format_report_summary, parse_method_args

    report = build_report(parse_method_args(args.runs), Path(args.gt), Path(args.output),
                          images_dir=Path(args.images) if args.images else None, reference=args.reference,
                          single_phase=args.single_phase, hpn=args.hpn, tolerance_mm=args.tolerance_mm,
                          n_overlays=args.overlays, progress=None, n_processes=args.np,
                          scheme=_label_scheme(args))
    print(format_report_summary(report))
    print(f"wrote {Path(args.output) / 'report.md'} (+ report.csv, per_case.csv, report.json, PNGs)")


def _demo(args: argparse.Namespace) -> None:
    from nnunet_hpn.demo import run_demo

    from nnunet_hpn.io.publish import check_outputs, replace_mode

    # the demo replaces its work folder: only an absent or empty folder or an earlier demo's
    check_outputs([(Path(args.workdir), "--workdir", "folder")])
    replace_mode(Path(args.workdir), "phantoms_full/phantoms.json", "--workdir")
    run_demo(Path(args.workdir), n_cases=args.cases, seed=args.seed)


def _add_phantom(sub: Subparsers) -> None:
    from nnunet_hpn.phantom import KNOWN_PHASES

    p = sub.add_parser("phantom", help=f"write synthetic multi-phase (default: {' + '.join(PHASES)}) abdominal CT "
                                       "cases with labels")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder of the cases (new, empty, or an earlier phantom set, "
                                                      "which is replaced): OUT_DIR/<case>/<phase>.nii.gz, label.nii.gz")
    add_option(p, "--cases", type=whole(1, 100000), default=10, help="number of cases")
    add_seed(p, 0)
    add_phases(p, f"phases to simulate, out of {' '.join(KNOWN_PHASES)}; the first is the reference (label.nii.gz), "
                  "the others are deformed (label_<phase>.nii.gz)")
    add_option(p, "--crop", type=margin_mm, metavar="MARGIN_MM",
               help="cut every file of a case to its label's box plus MARGIN_MM (world positions kept); boxes in "
                    "OUT_DIR/crop_boxes.json")
    add_option(p, "--preset", choices=("pancreas", "liver"), default="pancreas",
               help="pancreas: pancreas, PDAC, duct; liver: liver, hypervascular lesions, portal vein, aorta, with "
                    "OUT_DIR/labels.json for convert --labels (nnunet_hpn/phantom_liver.py)")
    p.set_defaults(func=_phantom)


def _add_convert(sub: Subparsers, methods: Sequence[str]) -> None:
    p = sub.add_parser("convert", help=f"IN_DIR/<case>/{{{','.join((*PHASES, 'label'))}}}.nii.gz -> "
                                       "$nnUNet_raw/DatasetXXX_NAME")
    p.add_argument("in_dir", metavar="IN_DIR", help="one folder per case: <phase>.nii.gz for each of --phases and "
                                                    "label.nii.gz, or DICOM study folders (see --phase-map)")
    add_dataset(p, "id of the new dataset (DatasetXXX_NAME)", type=whole(1, 999), dest="dataset_id",
                old=("--dataset-id",))
    add_option(p, "--name", required=True, help="name of the new dataset (DatasetXXX_NAME)")
    add_option(p, "--raw-root", help="folder of nnU-Net's raw datasets (default: $nnUNet_raw)")
    add_option(p, "--overwrite", action="store_true", help="replace an existing dataset with the same id")
    add_phases(p, "phase file names in channel order")
    add_option(p, "--reference-phase", help=f"grid of label.nii.gz and of the registered phases (default: "
                                            f"{PREFERRED_REFERENCE} if among the phases, else the first)")
    add_option(p, "--register", action="store_true",
               help="register every other phase (and its label_<phase>.nii.gz, if any) onto the reference phase; QC "
                    "per case in <dataset>/registration_qc/")
    add_option(p, "--crop-to-label", type=margin_mm, metavar="MARGIN_MM",
               help="cut every case (all phases, after --register, and the label) to the label's box plus MARGIN_MM, "
                    "world positions kept: an oracle ROI for experiments, or second-stage training data; boxes in "
                    "<dataset>/crop_boxes.json (every case needs a label)")
    add_registration_method(p, [method for method in methods if method != "none"], "with --register")
    add_processes(p, "worker processes (default: with --register nnU-Net's nnUNet_def_n_proc, else 1)", default=None)
    add_option(p, "--labels", metavar="LABELS.json",
               help="the labels of your data: dataset.json's 'labels' object (name -> value, or -> list of values for "
                    "regions), or {\"labels\": {...}} with regions_class_order, targets, lesion, union_precedence "
                    "beside it (default: background 0, pancreas 1, PDAC 2, duct 3)")
    add_option(p, "--phase-map", metavar="CSV",
               help="DICOM study folders: a reviewed phase map (case,phase,series,reason; see 'phase-map') whose "
                    "assignments replace the automatic ones")
    add_option(p, "--segment-map", nargs="+", default=[], metavar="SEGMENT=LABEL",
               help="DICOM-SEG segments whose label or property names no label of the dataset: segment label -> "
                    "label name (or 0 to leave the segment out)")
    add_unusual_intensities(p)
    p.set_defaults(func=_convert)


def _add_phase_map(sub: Subparsers) -> None:
    from nnunet_hpn.io.dicom_study import KNOWN_PHASES

    p = sub.add_parser("phase-map", help="DICOM study folders -> phase map CSV for review: which series is which "
                                         "phase and why (edit it, then convert/predict --phase-map)")
    p.add_argument("in_dir", metavar="IN_DIR", help="IN_DIR/<case>/ folders of DICOM files in any layout")
    add_option(p, "-o", "--output", required=True, metavar="CSV", help="the phase map to write")
    add_phases(p, f"the dataset's phases, out of {' '.join(KNOWN_PHASES)}")
    add_option(p, "--phase-map", metavar="CSV", help="an earlier, edited phase map: its assignments are kept")
    p.set_defaults(func=_phase_map)


def _add_uncrop(sub: Subparsers) -> None:
    p = sub.add_parser("uncrop", help="paste predictions made on crops back onto the full images "
                                      "(crop_boxes.json of convert --crop-to-label / phantom --crop)")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="label maps <case>.nii.gz on the cropped grids")
    add_option(p, "--boxes", required=True, help="crop_boxes.json")
    add_option(p, "--reference", required=True, metavar="FULL_IMAGES",
               help="folder with the full images: <case>_0000.nii.gz, <case>.nii.gz or <case>/<phase>.nii.gz")
    add_option(p, "-o", "--output", required=True, metavar="OUT_DIR", help="new (or empty) folder")
    p.set_defaults(func=_uncrop)


def _add_register(sub: Subparsers, methods: Sequence[str]) -> None:
    p = sub.add_parser("register", help="register a moving phase onto a fixed one (by default affine + "
                                        "diffeomorphic demons): warped image, displacement field, warped label, "
                                        "qc.json")
    add_option(p, "--fixed", required=True,
               help=f"reference image (NIfTI file or DICOM series folder), e.g. {PREFERRED_REFERENCE}")
    other = next(phase for phase in PHASES if phase != PREFERRED_REFERENCE)
    add_option(p, "--moving", required=True, help=f"image to warp onto the fixed grid, e.g. {other}")
    add_option(p, "-o", "--output", required=True, metavar="OUT_DIR", help="folder of the results")
    add_option(p, "--moving-label", help="label on the moving grid, warped with nearest-neighbour interpolation")
    add_option(p, "--fixed-label", help="label on the fixed grid: with --moving-label, pancreas surface distance and "
                                        "Dice before/after in qc.json")
    add_registration_method(p, methods, "method", old=("--method",))
    add_unusual_intensities(p)
    p.set_defaults(func=_register)


def _add_predict(sub: Subparsers, methods: Sequence[str]) -> None:
    from nnunet_hpn.augment.box_margins import STAGE2_MARGIN_MM

    p = sub.add_parser("predict", help="raw, unaligned phases -> registration -> trained nnU-Net model -> label map "
                                       "in the reference phase's geometry; a missing phase is filled with a constant "
                                       "0 image (0 after normalization, as phase dropout trains) and warned about")
    for phase in PHASES:
        add_option(p, f"--{phase}", help=f"{phase} phase (NIfTI file or DICOM series folder)")
    add_option(p, "--phase", action="append", default=[], metavar="NAME=PATH",
               help="any phase of the model by name (repeatable)")
    add_option(p, "-i", "--input", metavar="IN_DIR",
               help="folder mode: IN_DIR/<case>/<phase>.nii.gz (or <phase>/ DICOM folders)")
    add_option(p, "-m", "--model", metavar="MODEL_DIR",
               help="nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration> (or -d -c [-tr] [-p])")
    add_dataset(p, "instead of -m, as nnUNetv2_predict: dataset id or name", required=False)
    add_option(p, "-c", "--configuration", help="with -d: configuration, e.g. 3d_fullres")
    add_option(p, "-tr", "--trainer", default=DEFAULT_TRAINER, help="with -d: trainer")
    add_plans(p, "with -d: plans")
    add_option(p, "-o", "--output", required=True, help="OUT.nii.gz (one case) or OUT_DIR (folder mode)")
    add_folds(p, "-f", "--folds", help_text="folds to ensemble")
    add_option(p, "-device", "--device", choices=["cpu", "cuda"],
               help="default: cuda where a CUDA device is available (as nnUNetv2_predict), else cpu")
    add_option(p, "--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
               help="no test-time mirroring")
    add_option(p, "-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file of each fold")
    add_option(p, "-step_size", "--step-size", dest="step_size", type=real(0.0, 1.0, low_open=True), default=0.5,
               help="sliding-window step as a fraction of the patch, as nnU-Net's -step_size")
    add_option(p, "--save_probabilities", "--save-probabilities", dest="save_probabilities", action="store_true",
               help="also nnU-Net's <case>.npz / <case>.pkl (folder mode: + dataset.json, plans.json), as "
                    "nnUNetv2_ensemble reads them")
    add_option(p, "--continue_prediction", "--continue-prediction", dest="continue_prediction", action="store_true",
               help="folder mode: skip cases whose outputs are already in OUT_DIR")
    add_option(p, "-npp", type=positive_int, default=1,
               help="folder mode: processes reading and registering cases, as nnU-Net's -npp (whose default is 3)")
    add_option(p, "-nps", type=positive_int, default=1,
               help="folder mode: threads writing label maps and probabilities, as nnU-Net's -nps (whose default is 3)")
    add_option(p, "-num_parts", type=positive_int, default=1, help="folder mode: split the cases into N parts")
    add_option(p, "-part_id", type=whole(0, 4095), default=0,
               help="folder mode: the part to predict (0 .. num_parts-1)")
    add_registration_method(p, methods, "registration of the phases onto the reference phase",
                            old=("--registration",))
    add_option(p, "--qc", help="one case: write the registration QC (JSON) here")
    add_option(p, "--locator", metavar="MODEL_DIR",
               help="two-stage: a trained nnU-Net model folder with a pancreas label (e.g. trained on 'nnunet-hpn "
                    "locator-dataset'); HPN runs on its largest component's box + margin and the labels are pasted "
                    "back into the full scan")
    add_folds(p, "--locator-folds", help_text="folds of the locator")
    add_option(p, "--locator-margin", type=margin_mm, metavar="MM",
               help=f"margin around the locator's box in mm (default: {STAGE2_MARGIN_MM:g}, as stage 2 trains)")
    add_option(p, "--strict", action="store_true",
               help="with --locator: an empty locator mask is an error (default: warn, segment the whole scan)")
    add_option(p, "--output-format", choices=["nifti", "dicom-seg"], default="nifti",
               help="dicom-seg: also <case>.seg.dcm, a DICOM Segmentation referencing the reference phase's DICOM "
                    "series (needs highdicom: pip install 'nnunet-hpn[dicom]')")
    add_option(p, "--phase-map", metavar="CSV",
               help="folder mode with DICOM study folders: a reviewed phase map (see 'phase-map')")
    add_unusual_intensities(p)
    p.set_defaults(func=_predict)


def _add_locator_dataset(sub: Subparsers) -> None:
    p = sub.add_parser("locator-dataset", help="stage 1 of two-stage HPN: an nnU-Net dataset with one label (abnormal "
                                               "pancreas) derived from an HPN dataset, for the stock nnUNetv2_* "
                                               "commands")
    add_dataset(p, "the HPN dataset (id or name, in $nnUNet_raw)")
    add_option(p, "--target-id", type=whole(1, 999), required=True,
               help="id of the new dataset (Dataset<ID>_<name>Locator)")
    add_option(p, "--all-phases", action="store_true",
               help="every phase as a channel (default: only the reference phase)")
    add_option(p, "--target", metavar="NAME",
               help="the locator's label: this target of the dataset's label scheme (default: every foreground "
                    "label together; the paper's abnormal pancreas)")
    p.set_defaults(func=_locator_dataset)


def _add_cpu_config(sub: Subparsers) -> None:
    p = sub.add_parser("cpu-config", help="add a small-patch, narrow configuration to a plans file for CPU runs")
    add_dataset(p)
    add_plans(p, "plans file to add the configuration to (as nnU-Net's -p)")
    add_option(p, "--name", old=("-c",), default="3d_cpu", help="name of the new configuration")
    add_option(p, "--patch-size", type=whole(8, 4096), nargs=3, default=(32, 48, 48), metavar=("Z", "Y", "X"),
               help="voxels (at least 8 each; rounded up to the network's stride, with a note)")
    add_option(p, "--base-features", type=whole(1, 1024), default=8, help="features of the first stage")
    add_option(p, "--max-features", type=whole(1, 4096), default=64, help="features of any stage at most")
    add_option(p, "--batch-size", type=whole(1, 4096), default=2, help="cases per training batch")
    add_option(p, "--overwrite", action="store_true",
               help="replace a configuration of that name with other settings (even one with trained models)")
    add_option(p, "--spacing-factor", type=real(1.0, 64.0), default=1.0, metavar="F",
               help="a coarse configuration (as 3d_lowres): 3d_fullres's spacing × F, its own preprocessed data; 1: "
                    "3d_fullres's spacing and data")
    p.set_defaults(func=_cpu_config)


def _add_union(sub: Subparsers) -> None:
    p = sub.add_parser("union", help="the paper's final HPN output: union of original-pair and virtual-pair "
                                     "predictions (overlaps: the label scheme's union precedence; the paper's: "
                                     "PDAC > duct > pancreas)")
    add_option(p, "-i", "--input", nargs="+", required=True, help="prediction folders (2 or more)")
    add_option(p, "-o", "--output", required=True, metavar="OUT_DIR", help="folder of the union label maps")
    add_djfile(p, "the predictions (the model's)")
    p.set_defaults(func=_union)


def _add_split(sub: Subparsers) -> None:
    p = sub.add_parser("split", help="write a k-fold splits_final.json into the preprocessed folder, stratified on "
                                     "the lesion target (the paper's: PDAC)")
    add_dataset(p)
    add_option(p, "--n-folds", old=("--folds",), type=whole(2, 100), default=3, help="number of folds")
    add_seed(p, 12345, "seed of the stratified assignment of cases to folds")
    add_option(p, "--overwrite", action="store_true", help="replace a different existing splits_final.json")
    add_djfile(p, "the preprocessed or raw data")
    p.set_defaults(func=_split)


EMPTY_RULE = ("Empty masks: both empty -> Dice 1, HD95 0, NSD 1; one empty -> Dice 0, NSD 0, HD95 = image diagonal in "
              "mm; means never NaN.")


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="Dice, HD95 (mm) and NSD per target of the label scheme (the paper's: "
                                        "abnormal pancreas 1∪2∪3, PDAC 2, duct 3) per case and mean±std, missed "
                                        "cases",
                       description="Dice (nnU-Net's helpers), HD95 and normalised surface Dice (MONAI, physical mm "
                                   "from the image spacing) per case and target; mean ± population std; missed = "
                                   "target in truth but Dice 0. " + EMPTY_RULE)
    p.add_argument("gt_dir", metavar="GT_DIR", help="ground-truth label maps (nnUNetv2_evaluate_folder's order)")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="predicted label maps <case>.nii.gz")
    add_option(p, "-o", "--output", help="summary .json (a per-case .csv is written next to it)")
    add_tolerance(p)
    add_processes(p, "processes evaluating cases")
    add_option(p, "--only-predicted", action="store_true",
               help="evaluate only the cases in PRED_DIR (default: every case of GT_DIR needs a prediction)")
    add_djfile(p, "GT_DIR, then PRED_DIR")
    p.set_defaults(func=_evaluate)


def _add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="Table-1-style comparison of several methods: mean±std, Wilcoxon p-values, "
                                      "missed/rescued lesions, box plots, overlays of the largest gains",
                       description="Evaluates every method's predictions (same cases in each) against GT_DIR and "
                                   "writes report.md, report.csv, per_case.csv, report.json, a box plot PNG per "
                                   "target and, with --images, overlays of the cases with the largest lesion Dice "
                                   "gain of the reference. p: paired two-sided scipy.stats.wilcoxon against the "
                                   "reference (1 when all differences are 0; none for too few cases). " + EMPTY_RULE)
    p.add_argument("runs", nargs="+", metavar="NAME=PRED_DIR", help="prediction folder of each method")
    add_option(p, "--gt", required=True, metavar="GT_DIR", help="ground-truth label maps")
    add_option(p, "--images", metavar="IMAGES_DIR",
               help="imagesTr-style folder (<case>_0000, <case>_0001, ...; phase names from the dataset.json beside "
                    "it) for the overlays")
    add_option(p, "--reference", help="method to compare against (default: --hpn, else the last method)")
    add_option(p, "--single-phase", nargs=2, metavar="NAME",
               help=f"the two single-phase methods (default: {' '.join(PHASES)}, if so named)")
    add_option(p, "--hpn", help="method whose rescues of the lesion (PDAC) missed by both single-phase methods are "
                                "counted (default: the reference)")
    add_tolerance(p)
    add_option(p, "--overlays", type=whole(0, 100), default=3, help="cases with the largest gain to draw")
    add_processes(p, "processes evaluating cases")
    add_option(p, "-o", "--output", required=True, metavar="REPORT_DIR",
               help="report folder (created, or replaced if it holds an earlier report.md)")
    add_djfile(p, "GT_DIR, then the predictions")
    p.set_defaults(func=_report)


def _add_demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="phantoms -> convert -> plan -> short HPN training -> predict -> Dice + PNG (CPU)")
    add_option(p, "--workdir", default="hpn_demo", help="work folder (new, empty, or an earlier demo's, which is "
                                                         "replaced)")
    add_option(p, "--cases", type=whole(6, 100000), default=14, help="phantom cases; the last 4 are held out for "
                                                                     "testing")
    add_seed(p, 0)
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``nnunet-hpn`` parser: one subparser per subcommand, each with its handler as ``func``."""
    from nnunet_hpn import __version__
    from nnunet_hpn.pipeline.registration import METHODS

    parser = argparse.ArgumentParser(prog="nnunet-hpn", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    _add_convert(sub, METHODS)
    _add_phase_map(sub)
    _add_uncrop(sub)
    _add_register(sub, METHODS)
    _add_predict(sub, METHODS)
    _add_locator_dataset(sub)
    _add_cpu_config(sub)
    _add_union(sub)
    _add_split(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_demo(sub)
    return parser


def _close_progress_bars() -> None:
    """Close progress bars an error interrupted, so that the error gets a line of its own."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning) -> None:
    """An :class:`~nnunet_hpn.errors.HPNWarning` as one ``warning: <message>`` line on stderr; others as Python
    shows them."""
    if issubclass(category, HPNWarning):
        from tqdm import tqdm

        tqdm.write(f"warning: {message}", file=sys.stderr)  # above any progress bar, which is then redrawn
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", HPNWarning)  # every case's warning, not only the first
            warnings.showwarning = _show_warning
            func(args)
    except HPNInputError as e:
        _close_progress_bars()
        print(f"nnunet-hpn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a file-system problem found at write time (permissions, a full disk, a file in the way)
        _close_progress_bars()
        where = e.filename if e.filename is not None else "output"
        print(f"nnunet-hpn {args.command}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
