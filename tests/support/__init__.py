"""What the tests share, by what it is about: ``servers`` (private redis-server processes),
``flows`` (waiting, flows with short timings), ``kinds`` (one test, every consumer kind),
``workers`` (real worker processes) and ``chaos_app`` (the app those workers run)."""
