{
  "targets": [
    {
      "target_name": "erofs_vfsd_native",
      "sources": ["native/shim.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"]
    }
  ]
}
