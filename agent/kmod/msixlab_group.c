// SPDX-License-Identifier: GPL-2.0
/*
 * msixlab: vector groups on top of the mainline dynamic MSI-X primitives.
 *
 * Concepts:
 *  - A vector is set up in three steps, undone in reverse order:
 *    pci_msix_alloc_irq_at() (table index + Linux IRQ), request_irq()
 *    (handler; this is also when x86 programs the real vector and message),
 *    then publication in ml->vecs[].
 *  - A group takes between min and max vectors in one request; when fewer
 *    than min can be had every vector taken so far is released again, so a
 *    failed request leaves the table exactly as it was.
 *  - Group 0 is the vector MSI-X was enabled with; it goes away with
 *    pci_free_irq_vectors() at unbind only.
 *  - Group ids come from ml->next_group, which only grows: an id is never
 *    given twice while bound.  An explicit start gives exactly start,
 *    start + 1, ...: the index the kernel returns is checked each time.
 */
#include <linux/interrupt.h>
#include <linux/ktime.h>
#include <linux/percpu.h>
#include <linux/slab.h>

#include "msixlab.h"

static irqreturn_t msixlab_irq(int irq, void *data)
{
	struct msixlab_vec *vec = data;

	this_cpu_inc(*vec->counts);
	WRITE_ONCE(vec->last_cpu, raw_smp_processor_id());
	WRITE_ONCE(vec->last_ns, ktime_get_ns());
	/*
	 * Release: pairs with atomic64_read_acquire() of total in
	 * msixlab_raise() and msixlab_vector_info().  A reader that sees this
	 * increment also sees the count, last_cpu and last_ns written above
	 * (or those of a later interrupt), never older ones.
	 */
	atomic64_inc_return_release(&vec->total);
	atomic64_inc_return_release(&vec->ml->irqs);
	/* Full barrier inside: pairs with the waiter's prepare_to_wait(). */
	if (wq_has_sleeper(&vec->ml->raise_wq))
		wake_up(&vec->ml->raise_wq);
	return IRQ_HANDLED;
}

static struct msixlab_vec *msixlab_vec_new(struct msixlab_dev *ml)
{
	struct msixlab_vec *vec;

	vec = kzalloc_obj(*vec, GFP_KERNEL);
	if (!vec)
		return NULL;
	vec->counts = alloc_percpu(u64);
	if (!vec->counts) {
		kfree(vec);
		return NULL;
	}
	vec->ml = ml;
	kref_init(&vec->ref);
	vec->last_cpu = -1;
	atomic64_set(&vec->total, 0);
	return vec;
}

static void msixlab_vec_release(struct kref *ref)
{
	struct msixlab_vec *vec = container_of(ref, struct msixlab_vec, ref);

	free_percpu(vec->counts);
	kfree(vec);
}

void msixlab_vec_put(struct msixlab_vec *vec)
{
	kref_put(&vec->ref, msixlab_vec_release);
}

/* Request the handler for an allocated map and publish the vector. */
static int msixlab_vec_attach(struct msixlab_dev *ml, struct msixlab_vec *vec,
			      struct msixlab_grp *grp)
{
	int ret;

	snprintf(vec->name, sizeof(vec->name), "%s[%d]", ml->name,
		 vec->map.index);
	if (grp->fail_irq && grp->count + 1 == grp->fail_irq)
		ret = -ENOMEM;	/* the armed fault: this request_irq() fails */
	else
		ret = request_irq(vec->map.virq, msixlab_irq, 0, vec->name, vec);
	if (ret)
		return ret;
	vec->grp = grp;
	ml->vecs[vec->map.index] = vec;
	ml->nr_vectors++;
	grp->count++;
	return 0;
}

static void msixlab_vec_detach(struct msixlab_dev *ml, struct msixlab_vec *vec)
{
	ml->vecs[vec->map.index] = NULL;
	ml->nr_vectors--;
	vec->grp->count--;
	free_irq(vec->map.virq, vec);
	/*
	 * Release: a raise that sees dead (smp_load_acquire() in
	 * msixlab_raise_done()) also sees ml->gone when this is an unbind.
	 */
	smp_store_release(&vec->dead, true);
	wake_up_all(&ml->raise_wq);
}

/* Map the kernel's answer to the driver's one-meaning-each errno. */
static int msixlab_alloc_errno(int err, bool any_index)
{
	switch (err) {
	case -ENOTSUPP:
		return -EOPNOTSUPP;
	case -EBUSY:
		/* xa_alloc() full (any index) or xa_insert() collision */
		return any_index ? -ENOSPC : -EBUSY;
	case -ERANGE:
		return -EINVAL;
	default:
		return err;
	}
}

/*
 * The kernel must give exactly the index asked for (or, for any index, one
 * inside the table that the driver does not hold yet): anything else is the
 * kernel misbehaving, reported as EIO rather than published at a wrong place.
 * -EEXIST: the index is one of the driver's live vectors.
 */
static int msixlab_check_index(struct msixlab_dev *ml, struct msixlab_vec *vec,
			       unsigned int asked)
{
	unsigned int got = vec->map.index;

	if (got < ml->table_size && ml->vecs[got]) {
		dev_err(&ml->pdev->dev,
			"%s: pci_msix_alloc_irq_at(%d) returned index %u, which is already allocated\n",
			ml->name, (int)asked, got);
		return -EEXIST;
	}
	if (got >= ml->table_size || (asked != MSI_ANY_INDEX && got != asked)) {
		dev_err(&ml->pdev->dev,
			"%s: pci_msix_alloc_irq_at(%d) returned index %u\n",
			ml->name, (int)asked, got);
		return -EIO;
	}
	return 0;
}

static int msixlab_vec_alloc(struct msixlab_dev *ml, struct msixlab_grp *grp,
			     unsigned int index,
			     const struct irq_affinity_desc *affd)
{
	struct msixlab_vec *vec;
	int ret;

	vec = msixlab_vec_new(ml);
	if (!vec)
		return -ENOMEM;

	vec->map = pci_msix_alloc_irq_at(ml->pdev, index, affd);
	if (vec->map.index < 0) {
		ret = msixlab_alloc_errno(vec->map.index,
					  index == MSI_ANY_INDEX);
		goto err_destroy;
	}
	ret = msixlab_check_index(ml, vec, index);
	if (ret == -EEXIST) {
		ret = -EIO;	/* not ours to free: it is a live vector */
		goto err_destroy;
	}
	if (ret)
		goto err_free_map;
	vec->dynamic = true;

	ret = msixlab_vec_attach(ml, vec, grp);
	if (ret)
		goto err_free_map;
	return 0;

err_free_map:
	pci_msix_free_irq(ml->pdev, vec->map);
err_destroy:
	msixlab_vec_put(vec);
	return ret;
}

static void msixlab_vec_free(struct msixlab_dev *ml, struct msixlab_vec *vec)
{
	msixlab_vec_detach(ml, vec);
	if (vec->dynamic)
		pci_msix_free_irq(ml->pdev, vec->map);
	msixlab_vec_put(vec);
}

/* Free every vector of grp (highest index first); returns how many. */
static u32 msixlab_grp_release(struct msixlab_dev *ml, struct msixlab_grp *grp)
{
	u32 freed = 0;
	int i;

	for (i = ml->table_size - 1; i >= 0; i--) {
		struct msixlab_vec *vec = ml->vecs[i];

		if (vec && vec->grp == grp) {
			msixlab_vec_free(ml, vec);
			freed++;
		}
	}
	return freed;
}

static int msixlab_grp_check(struct msixlab_dev *ml,
			     const struct msixlab_group *req)
{
	if (req->pad)
		return -EINVAL;
	/* max may exceed the table (an upper bound, as for pci_alloc_irq_vectors) */
	if (req->min < 1 || req->min > req->max || req->min > ml->table_size)
		return -EINVAL;
	if (req->flags & ~MSIXLAB_GROUP_MANAGED)
		return -EINVAL;
	if (req->start != MSIXLAB_ANY_INDEX &&
	    (req->start >= ml->table_size ||
	     req->min > ml->table_size - req->start))
		return -EINVAL;
	if (req->cpu == MSIXLAB_NO_CPU)
		return (req->flags & MSIXLAB_GROUP_MANAGED) ? -EINVAL : 0;
	if (req->cpu >= nr_cpu_ids || !cpu_online(req->cpu))
		return -EINVAL;
	return 0;
}

/*
 * Take up to req->max vectors into grp; stop at the first failure.  At least
 * min is a success, except after EIO (a wrong index from the kernel).
 */
static int msixlab_grp_fill(struct msixlab_dev *ml, struct msixlab_grp *grp,
			    const struct irq_affinity_desc *affd)
{
	bool any = grp->start == MSIXLAB_ANY_INDEX;
	int ret = 0;
	u32 i;

	for (i = 0; i < grp->max; i++) {
		unsigned int index = any ? MSI_ANY_INDEX : grp->start + i;

		if (!any && index >= ml->table_size)
			break;
		if (!any && ml->vecs[index]) {
			ret = -EBUSY;
			break;
		}
		ret = msixlab_vec_alloc(ml, grp, index, affd);
		if (ret)
			break;
	}
	if (ret == -EIO)
		return ret;	/* the kernel misbehaved: never a partial success */
	if (grp->count >= grp->min)
		return 0;
	return ret ? ret : -ENOSPC;
}

int msixlab_grp_alloc(struct msixlab_dev *ml, struct msixlab_group *req)
{
	struct irq_affinity_desc *affd = NULL;
	struct msixlab_grp *grp;
	int ret;

	if (!ml->can_alloc_dyn)
		return -EOPNOTSUPP;
	ret = msixlab_grp_check(ml, req);
	if (ret)
		return ret;
	if (ml->next_group == MSIXLAB_NO_GROUP)
		return -ENOSPC;		/* ids are never reused while bound */

	grp = kzalloc_obj(*grp, GFP_KERNEL);
	if (!grp)
		return -ENOMEM;
	grp->id = ml->next_group;
	grp->min = req->min;
	grp->max = req->max;
	grp->start = req->start;
	grp->cpu = req->cpu;
	grp->flags = req->flags;
	grp->fail_irq = ml->fail_irq_next;	/* one-shot: this group takes it */
	ml->fail_irq_next = 0;

	if (req->cpu != MSIXLAB_NO_CPU) {
		affd = kzalloc_obj(*affd, GFP_KERNEL);
		if (!affd) {
			ret = -ENOMEM;
			goto err_free_grp;
		}
		cpumask_copy(&affd->mask, cpumask_of(req->cpu));
		affd->is_managed = !!(req->flags & MSIXLAB_GROUP_MANAGED);
	}

	ret = msixlab_grp_fill(ml, grp, affd);
	if (ret)
		goto err_release;

	kfree(affd);
	ml->next_group++;
	list_add_tail(&grp->node, &ml->groups);
	req->id = grp->id;
	req->count = grp->count;
	msixlab_indices(ml, grp, req->indices);
	return 0;

err_release:
	msixlab_grp_release(ml, grp);
	kfree(affd);
err_free_grp:
	kfree(grp);
	return ret;
}

static struct msixlab_grp *msixlab_grp_find(struct msixlab_dev *ml, u32 id)
{
	struct msixlab_grp *grp;

	list_for_each_entry(grp, &ml->groups, node)
		if (grp->id == id)
			return grp;
	return NULL;
}

int msixlab_grp_free(struct msixlab_dev *ml, u32 id)
{
	struct msixlab_grp *grp;
	u32 freed;

	if (id == 0)
		return -EPERM;
	grp = msixlab_grp_find(ml, id);
	if (!grp)
		return -ENOENT;
	freed = msixlab_grp_release(ml, grp);
	list_del(&grp->node);
	kfree(grp);
	return freed;
}

/* Free the dynamic groups, newest first. Group 0 stays. */
void msixlab_grp_free_all(struct msixlab_dev *ml)
{
	struct msixlab_grp *grp, *tmp;

	list_for_each_entry_safe_reverse(grp, tmp, &ml->groups, node) {
		if (grp == &ml->grp0)
			continue;
		msixlab_grp_release(ml, grp);
		list_del(&grp->node);
		kfree(grp);
	}
}

void msixlab_indices(struct msixlab_dev *ml, struct msixlab_grp *grp,
		     __u64 *words)
{
	u32 i;

	memset(words, 0, MSIXLAB_VEC_WORDS * sizeof(*words));
	for (i = 0; i < ml->table_size; i++)
		if (ml->vecs[i] && (!grp || ml->vecs[i]->grp == grp))
			words[i / 64] |= 1ULL << (i % 64);
}

int msixlab_grp_get(struct msixlab_dev *ml, struct msixlab_group *req)
{
	struct msixlab_grp *grp;

	if (req->pad)
		return -EINVAL;

	list_for_each_entry(grp, &ml->groups, node) {
		if (grp->id < req->id)
			continue;
		req->id = grp->id;
		req->count = grp->count;
		req->min = grp->min;
		req->max = grp->max;
		req->start = grp->start;
		req->cpu = grp->cpu;
		req->flags = grp->flags;
		msixlab_indices(ml, grp, req->indices);
		return 0;
	}
	return -ENOENT;
}

/* Group 0: the vector at index 0 that MSI-X was enabled with. */
int msixlab_grp0_setup(struct msixlab_dev *ml)
{
	struct msixlab_grp *grp = &ml->grp0;
	struct msixlab_vec *vec;
	int ret;

	grp->id = 0;
	grp->min = 1;
	grp->max = 1;
	grp->start = 0;
	grp->cpu = MSIXLAB_NO_CPU;

	vec = msixlab_vec_new(ml);
	if (!vec)
		return -ENOMEM;
	vec->map.index = 0;
	vec->map.virq = pci_irq_vector(ml->pdev, 0);
	if (vec->map.virq < 0) {
		ret = vec->map.virq;
		goto err_destroy;
	}
	ret = msixlab_vec_attach(ml, vec, grp);
	if (ret)
		goto err_destroy;
	list_add(&grp->node, &ml->groups);
	return 0;

err_destroy:
	msixlab_vec_put(vec);
	return ret;
}

void msixlab_grp0_teardown(struct msixlab_dev *ml)
{
	msixlab_grp_release(ml, &ml->grp0);
	list_del(&ml->grp0.node);
}
