{
  "targets": [
    {
      "target_name": "vsock",
      "sources": ["vsock.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "libraries": ["-lpthread"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
