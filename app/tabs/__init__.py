"""The app's tabs, one module each: `build()` lays out the components, `wire()` connects their events."""
