{
  "targets": [
    {
      "target_name": "peercred",
      "sources": ["peercred.c", "handoff.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "lessor-netbridge",
      "type": "executable",
      "sources": ["netbridge.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
