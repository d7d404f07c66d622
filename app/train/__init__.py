"""The Train tab: layout (`layout`), the training handler (`handlers`) and its live progress and curves (`progress`)."""
