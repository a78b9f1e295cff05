"""The `pneumonia` command as a newcomer meets it: help for everything, quiet on a closed pipe."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pneumonia
from pneumonia.cli import build_parser, main

from helpers import tool_environment


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_has_help_and_every_command_an_example():
    parser = build_parser()
    assert parser.description and "Tell pneumonia from normal" in parser.description
    assert "examples:" in parser.epilog
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {choice.dest: choice.help for choice in action._choices_actions}
    commands = _subcommands(parser)
    assert set(commands) == {
        "predict",
        "shift-check",
        "site",
        "promote",
        "export",
        "check-params",
        "tune-worker",
    }
    missing = []
    for name, command in commands.items():
        if not summaries.get(name):
            missing.append(f"{name}: no summary")
        if not command.description:
            missing.append(f"{name}: no description")
        if not (command.epilog or "").startswith("example:\n  pneumonia " + name):
            missing.append(f"{name}: no example")
        for option in command._actions:
            if not option.help or option.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(option.option_strings) or option.dest}")
    for option in parser._actions:
        if option is not action and not option.help:
            missing.append(f"pneumonia {'/'.join(option.option_strings)}")
    assert not missing, f"without help: {missing}"


# Each command's options as cli.py declared them before it became one module per command
# (recorded from that parser): flags, dest, action, type, default, nargs, choices, metavar. The
# type's name is part of the contract: argparse quotes it ("invalid _positive_int value: 'x'").
COMMAND_OPTIONS = {
    "predict": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("inputs", "inputs", "_StoreAction", None, None, "+", None, "IMAGE_OR_DIR"),
        ("--model", "model", "_StoreAction", None, None, None, None, None),
        ("--threshold", "threshold", "_StoreAction", "_probability", None, None, None, None),
        # Added since: a site's operating point (issue 25), exclusive with --threshold.
        ("--site", "site", "_StoreAction", None, None, None, None, "NAME"),
        ("--format", "format", "_StoreAction", None, "json", None, ("json", "csv"), None),
        ("--gradcam", "gradcam", "_StoreAction", "Path", None, None, None, "DIR"),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
        ("--batch-size", "batch_size", "_StoreAction", "_positive_int", 32, None, None, None),
    ],
    "shift-check": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("--model", "model", "_StoreAction", "Path", None, None, None, None),
        ("--members", "members", "_StoreAction", "_positive_int", None, None, None, "K"),
        ("--format", "format", "_StoreAction", None, "json", None, ("json", "csv"), None),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
    ],
    "site": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        (
            "site_command",
            "site_command",
            "_SubParsersAction",
            None,
            None,
            "A...",
            ("check", "calibrate", "list"),
            "ACTION",
        ),
    ],
    "promote": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("--name", "name", "_StoreAction", None, None, None, None, None),
        ("--from", "source_alias", "_StoreAction", None, None, None, None, "ALIAS"),
        ("--to", "target_alias", "_StoreAction", None, "champion", None, None, "ALIAS"),
        ("--force", "force", "_StoreTrueAction", None, False, 0, None, None),
        # Added since: a DVC experiment's version is promoted only when asked.
        ("--allow-experiment", "allow_experiment", "_StoreTrueAction", None, False, 0, None, None),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
    ],
    "export": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("--format", "format", "_StoreAction", None, None, None, ("onnx", "savedmodel"), None),
        ("--model", "model", "_StoreAction", None, None, None, None, None),
        ("--out", "out", "_StoreAction", "Path", None, None, None, "DIR"),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
    ],
    "check-params": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
    ],
    "tune-worker": [
        ("-h/--help", "help", "_HelpAction", None, "==SUPPRESS==", 0, None, None),
        ("--params", "params", "_StoreAction", "Path", Path("params.yaml"), None, None, None),
        ("--storage", "storage", "_StoreAction", None, None, None, None, None),
        ("--study", "study", "_StoreAction", None, None, None, None, None),
        ("--n-trials", "n_trials", "_StoreAction", "int", None, None, None, None),
        ("--study-trials", "study_trials", "_StoreAction", "int", None, None, None, None),
        ("-S/--set-param", "overrides", "_AppendAction", None, [], None, None, "KEY=VALUE"),
    ],
}


def _signature(option: argparse.Action) -> tuple:
    return (
        "/".join(option.option_strings) or option.dest,
        option.dest,
        type(option).__name__,
        None if option.type is None else option.type.__name__,
        option.default,
        option.nargs,
        None if option.choices is None else tuple(option.choices),
        option.metavar,
    )


def test_every_command_keeps_the_options_it_had_before_the_cli_became_a_package():
    commands = _subcommands(build_parser())
    assert list(commands) == list(COMMAND_OPTIONS)  # `pneumonia --help` lists them in this order
    for name, command in commands.items():
        assert [_signature(option) for option in command._actions] == COMMAND_OPTIONS[name], name


def test_a_bad_option_value_is_refused_with_the_message_and_status_it_always_had(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["predict", "scan.jpeg", "--batch-size", "0"])
    assert exit.value.code == 2
    assert "argument --batch-size: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:
        main(["predict", "scan.jpeg", "--threshold", "high"])
    assert exit.value.code == 2
    assert "argument --threshold: invalid _probability value: 'high'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    ["predict", "shift-check", "site", "promote", "export", "check-params", "tune-worker"],
)
def test_command_help_renders_with_its_example(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert f"example:\n  pneumonia {command}" in out
    assert "%(default)" not in out


def test_predict_into_a_closed_pipe_stops_quietly_with_status_zero(tiny_model, monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone, as `| head -1` does after its line
    closed = os.fdopen(write_end, "w")
    monkeypatch.setattr(sys, "stdout", closed)
    arguments = [
        "predict",
        *map(str, tiny_model["images"]),
        "--model",
        str(tiny_model["model_path"]),
    ]
    with pytest.raises(SystemExit) as exit:
        main(arguments)
    assert exit.value.code == 0
    closed.close()  # stdout now points at /dev/null: closing flushes nothing into the pipe
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow  # a real `pneumonia predict ... | head -1`, in a subprocess
def test_predict_piped_into_head_exits_zero_without_a_traceback(tiny_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(300):  # rows written one by one: most after the reader has gone
        path = tiny_model["images"][index % len(tiny_model["images"])]
        (inputs / f"{index:03d}{path.suffix}").write_bytes(path.read_bytes())
    command = [
        sys.executable,
        "-m",
        "pneumonia.cli",
        "predict",
        str(inputs),
        "--model",
        str(tiny_model["model_path"]),
        "--batch-size",
        "1",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tool_environment(PYTHONPATH=str(Path(pneumonia.__file__).parents[1])),
    )
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert first["error"] is None
    assert process.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
