{
  "targets": [
    {
      "target_name": "erofs_vfsd_native",
      "sources": ["native/shim.c"],
      "include_dirs": ["packages/vhost-user-ts/native"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"]
    },
    {
      "target_name": "erofs_vfsd_test_native",
      "sources": ["test/native/test_shim.c"],
      "include_dirs": ["packages/vhost-user-ts/native"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"]
    }
  ]
}
