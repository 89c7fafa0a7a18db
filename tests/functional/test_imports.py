"""What the parent imports, in a fresh interpreter."""


def test_the_parent_of_a_backup_imports_no_botocore():
    """The parent of a plain run needs no client (issue #12: importing botocore cost ~0.1 s of every run's start,
    and the folders of issue #18 once brought it back through a module-level import)."""
    import subprocess
    import sys

    code = ("import sys, obsbatch.cli, obsbatch.commands.backup, obsbatch.commands.pipeline, obsbatch.engine.pool, "
            "obsbatch.engine.tasks; print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
