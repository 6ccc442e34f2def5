/**
 * Small files are read and written synchronously on the hot paths of a
 * checkpoint's transfer (failover, migration, export). A checkpoint without
 * its memory is dozens of image files of a few KiB each, and every
 * asynchronous file call is a round trip through libuv's thread pool
 * (0.1–0.5 ms on this machine's two busy cores): at three to six of them a
 * file, hashing, chunking, storing and assembling a post-copy migration's
 * ~300 KB of images took ~100 ms of its downtime. The same calls made
 * synchronously on a file this small, in the page cache, take
 * microseconds. Larger files stay asynchronous, so the event loop — which
 * also keeps heartbeats and leases — never waits on the disk for long.
 */
export const SMALL_FILE_BYTES = 64 * 1024;
