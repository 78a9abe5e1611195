#!/usr/bin/env node
// The `erofs-vfsd` command: a thin dispatcher. Each subcommand's logic lives in src/cli/<cmd>.ts
// (run<Cmd>(args)); this file only declares options, validates them strictly and reports errors.
import yargs, { type CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { LOG_LEVELS } from '../daemon/logger.js';
import { serveBuilder } from './serve.js';
import { inspectBuilder } from './inspect.js';
import type { ControlCommand } from './stats.js';

function nonNegative(name: string) {
  return (v: unknown): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number of seconds, got '${String(v)}'`);
    return n;
  };
}

function fail(msg: string): never {
  process.stderr.write(`erofs-vfsd: ${msg}\n`);
  process.exit(1);
}

/** A command that sends one request over a running daemon's control socket. */
function controlCommand(command: ControlCommand, describe: string): CommandModule<object, { 'control-socket': string }> {
  return {
    command,
    describe,
    builder: (y) => y.option('control-socket', { type: 'string', demandOption: true, describe: "the daemon's --control-socket" }),
    handler: async (argv) => {
      const { runControlCommand } = await import('./stats.js');
      process.exitCode = await runControlCommand(command, { controlSocket: argv['control-socket'] });
    },
  };
}

async function main(): Promise<void> {
  await yargs(hideBin(process.argv))
    .scriptName('erofs-vfsd')
    .usage('$0 <command> [options]')
    .command(
      'mount <image> <mountpoint>',
      'mount an EROFS image on the host through /dev/fuse (foreground; Ctrl-C unmounts)',
      (y) =>
        y
          .positional('image', { type: 'string', demandOption: true, describe: 'EROFS image file' })
          .positional('mountpoint', { type: 'string', demandOption: true, describe: 'existing directory' })
          .option('device', { type: 'string', array: true, describe: 'extra device (blob) for multi-device images, in device-table order' })
          .option('entry-timeout', { type: 'number', describe: 'seconds the kernel may cache names', coerce: nonNegative('entry-timeout') })
          .option('attr-timeout', { type: 'number', describe: 'seconds the kernel may cache attributes', coerce: nonNegative('attr-timeout') })
          .option('log-level', { choices: LOG_LEVELS, default: 'info' as const }),
      async (argv) => {
        const { runMount } = await import('./mount.js');
        const code = await runMount({
          image: argv.image,
          mountpoint: argv.mountpoint,
          devices: argv.device,
          logLevel: argv['log-level'],
          entryTimeout: argv['entry-timeout'],
          attrTimeout: argv['attr-timeout'],
        });
        process.exitCode = code;
      },
    )
    .command(
      'inspect <image> [path]',
      'show what an EROFS image holds: superblock, features, devices, statistics, inodes by path or NID, extents, xattrs, fingerprints, content; compare two images',
      (y) => inspectBuilder(y),
      async (argv) => {
        const { runInspect } = await import('./inspect.js');
        process.exitCode = await runInspect({
          image: argv.image,
          path: argv.path,
          nid: argv.nid,
          devices: argv.device,
          json: argv.json,
          cat: argv.cat,
          recursive: argv.recursive,
          nids: argv.nids,
          stats: argv.stats,
          extents: argv.extents,
          compare: argv.compare,
          compareDevices: argv['compare-device'],
        });
      },
    )
    .command(
      'serve',
      'serve EROFS images to a VM as a vhost-user-fs back-end (virtio-fs)',
      (y) => serveBuilder(y),
      async (argv) => {
        const { runServe } = await import('./serve.js');
        await runServe(argv);
      },
    )
    .command(controlCommand('stats', "a running daemon's page-sharing statistics per trust domain (JSON)"))
    .command(controlCommand('drop-cache', 'ask a running daemon to release clean, unmapped shared blobs'))
    .demandCommand(1, 'a command is required (see --help)')
    .strict()
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(false)
    .fail((msg, err) => {
      if (err) fail(err.message);
      process.stderr.write(`erofs-vfsd: ${msg}\nRun 'erofs-vfsd --help' for usage.\n`);
      process.exit(2);
    })
    .parseAsync();
}

main().catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
