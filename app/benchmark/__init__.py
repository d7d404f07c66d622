"""The Benchmark tab: layout (`layout`) and the streaming latency benchmark (`handlers`)."""
