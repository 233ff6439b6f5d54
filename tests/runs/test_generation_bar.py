from diffes.runs.job import GenerationBar


def test_bar_shows_best_only_once_there_is_one(capsys):
    bar = GenerationBar()
    bar.label = "gen 0/2"
    bar.start(total=3)
    bar.advance(3)
    bar.finish()
    first = capsys.readouterr().err
    assert "3/3" in first and "best" not in first
    bar.best, bar.label = 0.125, "gen 1/2"
    bar.start(total=2)
    bar.advance(2)
    bar.finish()
    second = capsys.readouterr().err
    assert "gen 1/2" in second and "best=0.12500" in second
