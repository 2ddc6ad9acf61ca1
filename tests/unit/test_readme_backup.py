"""README "Back up MongoDB": the two lines tests/compose runs word for word keep their shape."""

from __future__ import annotations

import re

from tests.compose.stack import readme_commands


def test_the_backup_lines_are_a_dump_to_a_dated_file_and_a_restore_from_one() -> None:
    dump, restore = readme_commands("### Back up MongoDB")
    # The compose test finds the dump's file by this name and swaps it into the restore line.
    assert re.fullmatch(
        r"docker compose exec -T mongo mongodump .*> nightjar-\$\(date \+%F\)\.archive\.gz", dump
    ), dump
    assert re.fullmatch(
        r"docker compose exec -T mongo mongorestore .*< nightjar-\d{4}-\d{2}-\d{2}\.archive\.gz",
        restore,
    ), restore
