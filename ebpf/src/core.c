// CO-RE accessors for the kernel structures bridle's programs read.
//
// Rust eBPF code has no CO-RE field relocations, so every kernel struct field is read here,
// through clang's preserve_access_index: the loader rewrites each offset against the running
// kernel's BTF, and one object works across kernels whose layouts differ. Only the fields
// named below are declared; their offsets come from the kernel, never from this file.

typedef unsigned long long u64;
typedef unsigned int u32;

struct super_block {
	u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	unsigned int i_nlink;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct qstr {
	union {
		struct {
			u32 hash;
			u32 len;
		};
		u64 hash_len;
	};
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file;
	const char *filename;
} __attribute__((preserve_access_index));

static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *unsafe_ptr) = (void *)113;
static long (*bpf_probe_read_kernel_str)(void *dst, u32 size, const void *unsafe_ptr) = (void *)115;

#define READ_KERNEL(dst, src) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), __builtin_preserve_access_index(&(src)))

// What the exec hook needs to know about the file being executed.
struct bridle_exec_file {
	u64 dev;
	u64 ino;
	u64 filename;
	u32 nlink;
	u32 _pad;
};

// Fills `out` from `bprm`; returns 0, or a negative errno when a read faults.
__attribute__((always_inline)) int bridle_read_exec_file(const struct linux_binprm *bprm,
							  struct bridle_exec_file *out)
{
	struct file *file = 0;
	struct inode *inode = 0;
	struct super_block *sb = 0;
	const char *filename = 0;
	unsigned long ino = 0;
	unsigned int nlink = 0;
	u32 dev = 0;
	long err;

	if ((err = READ_KERNEL(file, bprm->file)))
		return err;
	if ((err = READ_KERNEL(filename, bprm->filename)))
		return err;
	if ((err = READ_KERNEL(inode, file->f_inode)))
		return err;
	if ((err = READ_KERNEL(ino, inode->i_ino)))
		return err;
	if ((err = READ_KERNEL(nlink, inode->i_nlink)))
		return err;
	if ((err = READ_KERNEL(sb, inode->i_sb)))
		return err;
	if ((err = READ_KERNEL(dev, sb->s_dev)))
		return err;
	out->dev = dev;
	out->ino = ino;
	out->filename = (u64)filename;
	out->nlink = nlink;
	out->_pad = 0;
	return 0;
}

#define PLACE_NAME_LEN 64

// Where the executed file sits (mirrors ExecPlace in bridle-common).
struct bridle_exec_place {
	u64 dir_dev;
	u64 dir_ino;
	u32 name_len;
	u32 _pad;
	char name[PLACE_NAME_LEN];
};

// Fills `out` (zeroed by the caller) with the directory and name of the file `bprm` executes,
// as reached through the path it was opened by; returns 0, or a negative errno when a read
// faults.
__attribute__((always_inline)) int bridle_read_exec_place(const struct linux_binprm *bprm,
							   struct bridle_exec_place *out)
{
	struct file *file = 0;
	struct dentry *dentry = 0;
	struct dentry *parent = 0;
	struct inode *dir = 0;
	struct super_block *sb = 0;
	const unsigned char *name = 0;
	unsigned long ino = 0;
	u32 len = 0;
	u32 dev = 0;
	long err;

	if ((err = READ_KERNEL(file, bprm->file)))
		return err;
	if ((err = READ_KERNEL(dentry, file->f_path.dentry)))
		return err;
	if ((err = READ_KERNEL(parent, dentry->d_parent)))
		return err;
	if ((err = READ_KERNEL(len, dentry->d_name.len)))
		return err;
	if ((err = READ_KERNEL(name, dentry->d_name.name)))
		return err;
	if ((err = READ_KERNEL(dir, parent->d_inode)))
		return err;
	if ((err = READ_KERNEL(ino, dir->i_ino)))
		return err;
	if ((err = READ_KERNEL(sb, dir->i_sb)))
		return err;
	if ((err = READ_KERNEL(dev, sb->s_dev)))
		return err;
	err = bpf_probe_read_kernel_str(out->name, PLACE_NAME_LEN, name);
	if (err < 0)
		return err;
	out->dir_dev = dev;
	out->dir_ino = ino;
	out->name_len = len;
	return 0;
}

struct kernfs_node {
	u64 id;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup_subsys_state *parent;
} __attribute__((preserve_access_index));

struct cgroup_root {
	int hierarchy_id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct cgroup_subsys_state self;
	struct kernfs_node *kn;
	struct cgroup_root *root;
} __attribute__((preserve_access_index));

// Whether `cgrp` is on the cgroup v2 hierarchy (the default root, hierarchy id 0) rather than
// a v1 controller's: only v2 cgroups are workloads.
__attribute__((always_inline)) int bridle_cgroup_is_v2(const struct cgroup *cgrp)
{
	struct cgroup_root *root = 0;
	int id = -1;

	if (READ_KERNEL(root, cgrp->root))
		return 0;
	if (READ_KERNEL(id, root->hierarchy_id))
		return 0;
	return id == 0;
}

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

typedef struct {
	u32 val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

#define TASK_COMM_LEN 16

struct task_struct {
	int tgid;
	struct css_set *cgroups;
	const struct cred *cred;
	char comm[TASK_COMM_LEN];
} __attribute__((preserve_access_index));

// How many cgroups a chain holds (bridle-common's MAX_CGROUP_DEPTH).
#define CGROUP_CHAIN 16

// Fills ids with the cgroup ids (kernfs node ids, the directories' inode numbers) of `cgrp`
// and its ancestors, nearest first, the root last; returns how many. A cgroup's `self` css
// is its first member, so a css parent pointer is the parent cgroup's address; the offset is
// still taken from the kernel's BTF rather than assumed.
__attribute__((always_inline)) u32 bridle_cgroup_chain(const struct cgroup *cgrp, u64 *ids)
{
	u32 n = 0;
	unsigned long self = __builtin_preserve_field_info(cgrp->self, 0 /* BYTE_OFFSET */);

	for (int i = 0; i < CGROUP_CHAIN; i++) {
		struct kernfs_node *kn = 0;
		struct cgroup_subsys_state *parent = 0;
		u64 id = 0;

		if (!cgrp)
			break;
		if (READ_KERNEL(kn, cgrp->kn))
			break;
		if (READ_KERNEL(id, kn->id))
			break;
		ids[i] = id;
		n = i + 1;
		if (READ_KERNEL(parent, cgrp->self.parent))
			break;
		cgrp = parent ? (const struct cgroup *)((const char *)parent - self) : 0;
	}
	return n;
}

// The cgroup chain of `task`'s cgroup v2 cgroup (see bridle_cgroup_chain); 0 on a fault.
__attribute__((always_inline)) u32 bridle_task_cgroup_chain(const struct task_struct *task,
							     u64 *ids)
{
	struct css_set *cset = 0;
	struct cgroup *cgrp = 0;

	if (READ_KERNEL(cset, task->cgroups))
		return 0;
	if (READ_KERNEL(cgrp, cset->dfl_cgrp))
		return 0;
	return bridle_cgroup_chain(cgrp, ids);
}

// The thread-group id (user space's pid) of `task`, or 0 when the read faults.
__attribute__((always_inline)) u32 bridle_task_tgid(const struct task_struct *task)
{
	int tgid = 0;

	if (READ_KERNEL(tgid, task->tgid))
		return 0;
	return (u32)tgid;
}

static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;

// Who the current task is, as a tally key names it (mirrors Identity in main.rs).
struct bridle_identity {
	u32 uid;
	u32 _pad;
	u64 comm[TASK_COMM_LEN / 8];
};

// Fills `out` with the current task's real uid and comm, read in place through its BTF
// pointer: the values bpf_get_current_uid_gid and bpf_get_current_comm give (the uid as the
// initial user namespace sees it, the comm NUL-padded as the kernel keeps it), without those
// helpers' id-map walk and string copy, which were a sixth of a connect program's time.
//
// The comm is read as two 8-byte words, not byte by byte: the verifier walks task_struct's
// members for every load through the pointer, in every state it explores, and sixteen loads
// added about 14 ms to loading the programs.
__attribute__((always_inline)) void bridle_current_identity(struct bridle_identity *out)
{
	struct task_struct *task = bpf_get_current_task_btf();
	const u64 *comm = (const u64 *)((const char *)task +
					__builtin_preserve_field_info(task->comm, 0 /* BYTE_OFFSET */));

	out->uid = task->cred->uid.val;
	out->_pad = 0;
	out->comm[0] = comm[0];
	out->comm[1] = comm[1];
}

// --- unix socket addresses ---------------------------------------------------------------
//
// A sock_addr program's context, `struct bpf_sock_addr`, has no field for a unix address;
// the kernel's own `struct bpf_sock_addr_kern` behind it has (`uaddr`, `uaddrlen`, since
// Linux 6.7 with the unix hooks). The kfunc bpf_cast_to_kern_ctx gives a program that struct.
//
// aya 0.14 cannot relocate kfunc (ksym) calls, so the kfunc is called through a helper-call
// placeholder: a helper id no kernel has. bridle's unix loader (agent/src/kernel/unix.rs)
// rewrites each such call into a kfunc call with the kfunc's BTF id from the running kernel's
// BTF before BPF_PROG_LOAD; anything that loads the program unrewritten is refused by the
// verifier (unknown helper), so the placeholder can never run.

// Keep in sync with KFUNC_CAST_TO_KERN_CTX in agent/src/kernel/unix.rs.
#define BRIDLE_KFUNC_CAST_TO_KERN_CTX 0x62726401

struct sockaddr;

struct bpf_sock_addr_kern {
	struct sockaddr *uaddr;
	u32 uaddrlen;
} __attribute__((preserve_access_index));

static struct bpf_sock_addr_kern *(*bridle_cast_to_kern_ctx)(void *ctx) =
	(void *)BRIDLE_KFUNC_CAST_TO_KERN_CTX;

// sizeof(sun_path); offsetof(struct sockaddr_un, sun_path) is the 2 bytes of sun_family.
#define UNIX_PATH_LEN 108
#define SUN_PATH_OFFSET 2

// A unix key's name: sun_path and four zero bytes (UNIX_KEY_NAME_LEN in bridle-common).
#define UNIX_KEY_NAME_LEN (UNIX_PATH_LEN + 4)

// The spelling check below is branch-free within each byte. BPF has no conditional move, so
// a comparison whose result is used as a value becomes a branch, and the verifier would walk
// one path per outcome of every byte, through the rest of the program, far past its limit.
// An empty asm statement makes a value opaque to the compiler, which then cannot turn the
// arithmetic back into a comparison.

// 1 when v == 0, else 0 (v < 2^31).
static __attribute__((always_inline)) u32 is_zero(u32 v)
{
	asm volatile("" : "+r"(v));
	return (v - 1) >> 31;
}

// 1 when a == b, else 0 (bytes).
static __attribute__((always_inline)) u32 is_eq(u32 a, u32 b)
{
	return is_zero(a ^ b);
}

// Reads the address the hook judges into `name`, a unix map key's name (UNIX_KEY_NAME_LEN
// bytes, zero on entry): a pathname up to its first NUL (the kernel cuts it there, and what
// follows must not make a distinct key), or an abstract name, a NUL byte and every byte given
// after it. Returns the name's length (1..UNIX_PATH_LEN), or a negative errno when the address
// cannot be read; sets *noncanonical for a pathname that is relative or has an empty, "." or
// ".." component or a trailing "/".
__attribute__((always_inline)) int bridle_read_unix_addr(void *ctx, unsigned char *name,
							 u32 *noncanonical)
{
	struct bpf_sock_addr_kern *kern = bridle_cast_to_kern_ctx(ctx);
	const unsigned char *sun_path;
	u32 given, len, bad;
	long copied;
	int i;

	*noncanonical = 0;
	if (!kern)
		return -14;
	sun_path = (const unsigned char *)kern->uaddr + SUN_PATH_OFFSET;
	given = kern->uaddrlen;
	// The kernel has checked this already (unix_validate_addr); a bound for the verifier.
	if (given <= SUN_PATH_OFFSET || given > SUN_PATH_OFFSET + UNIX_PATH_LEN)
		return -22;
	given -= SUN_PATH_OFFSET;
	if (bpf_probe_read_kernel(name, 1, sun_path))
		return -14;
	if (name[0] == 0) {
		// Abstract: exactly the bytes given; the rest of `name` stays zero.
		if (bpf_probe_read_kernel(name, given, sun_path))
			return -14;
		return (int)given;
	}
	// A pathname: up to its first NUL or `given` bytes, NUL-terminated (hence the slack in
	// `name`); the bytes after it stay zero. The copy may read one byte past `given`, inside
	// the kernel's address buffer, and overwrites it with the NUL.
	copied = bpf_probe_read_kernel_str(name, given + 1, sun_path);
	if (copied <= 1)
		return -14;
	len = (u32)copied - 1;
	bad = is_eq(name[0], '/') ^ 1;
	for (i = 0; i < UNIX_PATH_LEN; i++) {
		u32 n1, n2, n3, dot1, dot2, end2, end3, empty;

		// Only the path's own bytes: the rest of the program then meets one state
		// whatever the length (the registers that differ are dead after the loop).
		if ((u32)i >= len)
			break;
		n1 = name[i + 1];
		n2 = name[i + 2];
		n3 = name[i + 3];
		dot1 = is_eq(n1, '.');
		dot2 = is_eq(n2, '.');
		end2 = is_zero(n2) | is_eq(n2, '/');
		end3 = is_zero(n3) | is_eq(n3, '/');
		// "//", a trailing "/" (but "/" alone is the root), "/." and "/.." components.
		empty = is_eq(n1, '/') | (is_zero(n1) & (i > 0));
		bad |= is_eq(name[i], '/') & (empty | (dot1 & end2) | (dot1 & dot2 & end3));
	}
	*noncanonical = bad;
	return (int)len;
}

// Adds one to a counter in a map value, atomically (a BPF atomic add): the Rust BPF target's
// `core` has no atomic read-modify-write.
__attribute__((always_inline)) void bridle_count_one(u64 *counter)
{
	__sync_fetch_and_add(counter, 1);
}
