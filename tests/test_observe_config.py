"""Configuration keys of issue 15: hooks, metrics listen address."""

from __future__ import annotations

from pathlib import Path

import pytest

from stem_core.config import dump_toml, load_config
from stem_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stem.toml"
    path.write_text(text)
    return str(path)


def test_hook_settings_inherit_from_stemd_and_reload_back(tmp_path: Path) -> None:
    path = write(tmp_path, """\
[stemd]
on_state_change = "/usr/local/bin/page --all"
hook_timeout = 5
metrics_listen = "127.0.0.1:9839"

[programs.x]
command = "/bin/sleep 100"
on_state_change_states = ["fatal", "crash-loop"]

[programs.y]
command = "/bin/sleep 100"
on_state_change = "/usr/local/bin/other"
""")
    config = load_config(path, environ={})
    x, y = config.programs
    assert x.on_state_change == "/usr/local/bin/page --all" and x.hook_timeout == 5
    assert x.on_state_change_states == ("FATAL", "crash-loop")
    assert y.on_state_change == "/usr/local/bin/other"
    assert y.on_state_change_states == ("FATAL", "crash-loop", "failed-exit")
    assert config.master.metrics_listen == "127.0.0.1:9839"
    again = tmp_path / "again.toml"
    again.write_text(dump_toml(config))
    assert load_config(str(again), environ={}).programs == config.programs


@pytest.mark.parametrize(("line", "message"), [
    ('on_state_change_states = "FATL"', "did you mean FATAL?"),
    ("on_state_change = \"/bin/x 'unclosed\"", "cannot split the command"),
])
def test_bad_hook_settings_name_file_line_and_key(tmp_path: Path, line: str,
                                                  message: str) -> None:
    path = write(tmp_path, f'[programs.x]\ncommand = "/bin/true"\n{line}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert message in text and f"{path}:3" in text and "[programs.x]" in text, text


@pytest.mark.parametrize("value", ["9839", "host:9839", "127.0.0.1:0", "127.0.0.1:99999"])
def test_bad_listen_address(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'[stemd]\nmetrics_listen = "{value}"\n'
                 '[programs.x]\ncommand = "/bin/true"\n')
    with pytest.raises(ConfigError, match="metrics_listen"):
        load_config(path, environ={})


@pytest.mark.parametrize(("value", "size"), [
    ('"512M"', 512 * 2 ** 20), ('"1.5G"', 3 * 2 ** 29), ('"64MiB"', 64 * 2 ** 20),
    ("65536", 65536), ('"100k"', 102400)])
def test_max_rss_sizes(tmp_path: Path, value: str, size: int) -> None:
    path = write(tmp_path, f'[programs.x]\ncommand = "/bin/true"\nmax_rss = {value}\n')
    assert load_config(path, environ={}).programs[0].max_rss == size


@pytest.mark.parametrize("value", ['"lots"', '"0"', '"-1M"', '"12X"'])
def test_bad_max_rss(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f'[programs.x]\ncommand = "/bin/true"\nmax_rss = {value}\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}:3" in str(err.value) and "max_rss" in str(err.value)
