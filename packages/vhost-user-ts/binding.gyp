{
  "targets": [
    {
      "target_name": "vhost_user_ts_sys",
      "sources": ["native/sys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"]
    }
  ]
}
