// SPDX-License-Identifier: GPL-2.0
/* Lets the bool-only CONFIG_SW_SYNC build as a module for cohere's VM tests. */
#include <linux/module.h>
#include <linux/string.h>
#include <linux/sync_file.h>

/* sync_debug.c only uses this for debugfs text, and the kernel does not export it. */
char *sync_file_get_name(struct sync_file *sync_file, char *buf, int len)
{
	strscpy(buf, sync_file->user_name[0] ? sync_file->user_name : "sync_file", len);
	return buf;
}

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("sw_sync test timelines (out of tree, for cohere's VM tier)");
