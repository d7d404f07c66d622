"""Stage 8, reports: the model card (`model_card`), the paper network's sections (`paper`), and the command that builds them and the README's results block (`build`)."""
