"""The About tab: layout (`layout`), its texts (`texts`) and the model card view (`modelcard`)."""
