#!/usr/bin/env python3
"""A passthrough FUSE filesystem whose fsync can be made to fail, for tests of what tidegate does
when the disk stops confirming writes. Everything is passed to the directory ROOT; while the file
FAIL_FLAG exists (outside the mount), every fsync and fdatasync answers EIO.

Usage: faulty_fs.py ROOT MOUNTPOINT FAIL_FLAG   (runs in the foreground until unmounted)
Needs fusepy (pip) and libfuse2 (Debian); scripts/test installs both.
"""
import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class Faulty(Operations):
    def __init__(self, root, flag):
        self.root = root
        self.flag = flag

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _sync(self, fh, datasync):
        if os.path.exists(self.flag):
            raise FuseOSError(errno.EIO)
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    # Files and directories: passed through.
    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def mkdir(self, path, mode):
        return os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        return os.rmdir(self._p(path))

    def unlink(self, path):
        return os.unlink(self._p(path))

    def rename(self, old, new):
        return os.rename(self._p(old), self._p(new))

    def chmod(self, path, mode):
        return os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._p(path), uid, gid)

    def utimens(self, path, times=None):
        return os.utime(self._p(path), times)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def create(self, path, mode, fi=None):
        # The kernel reads through this handle too (mmap, page cache): open it read-write.
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is None:
            os.truncate(self._p(path), length)
        else:
            os.ftruncate(fh, length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    # The fault.
    def fsync(self, path, datasync, fh):
        return self._sync(fh, datasync)

    def fsyncdir(self, path, datasync, fh):
        if os.path.exists(self.flag):
            raise FuseOSError(errno.EIO)
        return 0


if __name__ == "__main__":
    root, mountpoint, flag = sys.argv[1:4]
    FUSE(Faulty(root, flag), mountpoint, foreground=True, nothreads=True, allow_other=False)
