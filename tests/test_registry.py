"""The registry as the one source of method facts: every method is covered by the variant-driven tests,
and a method registered in a test module (tests/throwaway_method.py) goes through them untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import quantswap

TESTS = Path(__file__).resolve().parent
#: The tests that take the ``variant`` fixture, one per area the issue names (method, codec, freeze, checkpoint, CLI).
VARIANT_TESTS = {
    "test_methods.py": "test_a_swapped_model_trains",
    "test_freeze.py": "test_decode_of_encode_is_the_forward_bit_for_bit",
    "test_checkpoint.py": "test_save_load_gives_identical_outputs",
    "test_variants_cli.py": "test_finetune_cli_runs_every_variant",
}


def test_every_registered_method_has_a_variant():
    """A method without variants would silently skip every test that takes the ``variant`` fixture."""
    covered = {v.method for v in quantswap.list_variants()}
    missing = set(quantswap.list_methods()) - covered
    assert not missing, f"methods without a variant (set `variants` on their config class): {missing}"


def test_the_test_only_method_goes_through_the_variant_tests():
    """No test names the throwaway method, yet collection gives each variant test a case for it."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *(str(TESTS / f) for f in VARIANT_TESTS)], capture_output=True, text=True, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    for file, test in VARIANT_TESTS.items():
        ids = [line for line in done.stdout.splitlines() if f"{file}::{test}[" in line]
        assert any("throwaway" in i for i in ids), f"{file}::{test} does not cover the throwaway method"
        assert all(any(v.name in i for i in ids) for v in quantswap.list_variants()), f"{file}::{test}: {ids}"


def test_registering_checks_the_method_facts():
    import dataclasses

    from quantswap.config import QuantConfig, Variant
    from quantswap.methods.xnor import XnorWeight

    @dataclasses.dataclass
    class NoKind(QuantConfig):
        method = "no-kind"
        kind = "quaternary"

        def weight_quantizer(self, layer):
            return XnorWeight()

    with pytest.raises(ValueError, match="kind must be one of"):
        quantswap.register_method(NoKind)
    NoKind.kind, NoKind.variants = "binary", (Variant("other", "irnet"),)
    with pytest.raises(ValueError, match="variants must all be variants of method 'no-kind'"):
        quantswap.register_method(NoKind)
    assert not quantswap.is_method("no-kind")


def test_the_cli_and_the_cards_take_their_method_lists_from_the_registry(capsys):
    from quantswap.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "throwaway" in capsys.readouterr().out
    assert main(["finetune", "--method", "dorefa"]) == 2
    err = capsys.readouterr().err
    assert "throwaway" in quantswap.list_methods() and f"one of {', '.join(quantswap.list_methods())}" in err
